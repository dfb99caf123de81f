// Kubernetes' $(VAR) expansion (k8s.io/kubernetes/third_party/forked/golang/expansion):
// `$(NAME)` becomes the value of NAME when NAME is defined, stays as written otherwise;
// `$$` is an escaped `$`, so `$$(NAME)` yields the literal `$(NAME)`.
export function expand(input: string, lookup: (name: string) => string | undefined): string {
  let out = '';
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    if (c !== '$' || i + 1 >= input.length) {
      out += c;
      continue;
    }
    const n = input[i + 1];
    if (n === '$') {
      out += '$';
      i++;
      continue;
    }
    if (n === '(') {
      const close = input.indexOf(')', i + 2);
      if (close < 0) {
        out += input.slice(i);
        break;
      }
      const name = input.slice(i + 2, close);
      const v = lookup(name);
      out += v === undefined ? `$(${name})` : v;
      i = close;
      continue;
    }
    out += c;
  }
  return out;
}

/** The process argv by Kubernetes' rules for command/args against the image's entrypoint/cmd. */
export function resolveArgv(opts: { command: string[]; args: string[]; entrypoint: string[]; cmd: string[]; env: Map<string, string> }): string[] {
  const lookup = (n: string) => opts.env.get(n);
  const ex = (xs: string[]) => xs.map((x) => expand(x, lookup));
  if (opts.command.length > 0) return [...ex(opts.command), ...ex(opts.args)];
  if (opts.args.length > 0) return [...opts.entrypoint, ...ex(opts.args)];
  return [...opts.entrypoint, ...opts.cmd];
}
