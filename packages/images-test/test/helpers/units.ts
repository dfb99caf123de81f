// Reads a systemd unit the way systemd would start it: EnvironmentFile= and Environment=
// loaded, then ${VAR} and $VAR in ExecStart= expanded (the subset of systemd's rules that our
// units use), so tests start a service exactly as its unit says.
export interface ServiceCommand {
  argv: string[];
  environmentFiles: { path: string; optional: boolean }[];
}

export function serviceSection(unitText: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of unitText.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      section = sec[1]!;
      continue;
    }
    if (section !== 'Service') continue;
    const i = line.indexOf('=');
    if (i < 0) throw new Error(`unit: cannot parse line "${line}"`);
    const k = line.slice(0, i).trim();
    out.set(k, [...(out.get(k) ?? []), line.slice(i + 1).trim()]);
  }
  return out;
}

export function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const i = line.indexOf('=');
    if (i < 0) continue;
    let v = line.slice(i + 1).trim();
    if (v.length >= 2 && ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'")))) v = v.slice(1, -1);
    env[line.slice(0, i).trim()] = v;
  }
  return env;
}

/** ExecStart's argv with the unit's environment; readFile reads the machine's files. */
export function execStart(unitText: string, readFile: (path: string) => string | undefined): { argv: string[]; env: Record<string, string>; pre: string[][] } {
  const s = serviceSection(unitText);
  const env: Record<string, string> = {};
  for (const e of s.get('Environment') ?? []) Object.assign(env, parseEnvFile(e.replace(/^"|"$/g, '')));
  for (const f of s.get('EnvironmentFile') ?? []) {
    const optional = f.startsWith('-');
    const path = optional ? f.slice(1) : f;
    const text = readFile(path);
    if (text === undefined) {
      if (optional) continue;
      throw new Error(`EnvironmentFile ${path} is missing: systemd would not start this unit`);
    }
    Object.assign(env, parseEnvFile(text));
  }
  const starts = s.get('ExecStart') ?? [];
  if (starts.length !== 1) throw new Error(`expected one ExecStart=, found ${starts.length}`);
  const lookup = (name: string) => {
    if (!(name in env)) throw new Error(`ExecStart uses $${name}, which the unit's environment does not set`);
    return env[name]!;
  };
  // systemd: a word that is exactly $NAME becomes the value split into words (none if empty);
  // ${NAME} stays one word, also inside a longer word.
  const argv = starts[0]!.split(/\s+/).flatMap((word) => {
    const whole = /^\$(\w+)$/.exec(word);
    if (whole) return lookup(whole[1]!).split(/\s+/).filter(Boolean);
    return [word.replace(/\$\{(\w+)\}/g, (_m, name: string) => lookup(name))];
  });
  // ExecStartPre= lines in order.
  const pre = (s.get('ExecStartPre') ?? []).map((l) => l.split(/\s+/));
  return { argv, env, pre };
}
