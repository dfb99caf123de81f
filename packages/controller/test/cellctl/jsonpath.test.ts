// kubectl's -o jsonpath templates, on the shapes cellctl prints.
import { describe, expect, it } from 'vitest';
import { jsonPath, JsonPathError } from '../../src/cellctl/jsonpath.js';
import { parseOutput } from '../../src/cellctl/commands.js';

const list = {
  apiVersion: 'v1',
  kind: 'PodList',
  items: [
    {
      metadata: { name: 'web', labels: { 'app.kubernetes.io/name': 'web' } },
      status: {
        phase: 'Running',
        conditions: [
          { type: 'Ready', status: 'True' },
          { type: 'Initialized', status: 'True' },
        ],
        containerStatuses: [{ name: 'app', ready: true, restartCount: 2 }],
      },
    },
    { metadata: { name: 'job', labels: {} }, status: { phase: 'Succeeded', conditions: [{ type: 'Ready', status: 'False' }], containerStatuses: [] } },
  ],
};

describe('jsonPath (kubectl templates)', () => {
  it.each<[string, string]>([
    ['{.items[0].status.phase}', 'Running'],
    ['{.items[*].metadata.name}', 'web job'],
    ['{$.items[1].metadata.name}', 'job'],
    ['{range .items[*]}{.metadata.name}{"\\t"}{.status.phase}{"\\n"}{end}', 'web\tRunning\njob\tSucceeded\n'],
    ['{range .items}{.metadata.name},{end}', 'web,job,'],
    ['{.items[?(@.status.phase=="Succeeded")].metadata.name}', 'job'],
    ['{.items[0].status.conditions[?(@.type=="Ready")].status}', 'True'],
    ["{.items[0].metadata.labels['app.kubernetes.io/name']}", 'web'],
    ['{.items[0].metadata.labels.app\\.kubernetes\\.io/name}', 'web'],
    ['{.items[0].status.containerStatuses[0].restartCount}', '2'],
    ['{.items[0].status.containerStatuses[0].ready}', 'true'],
    ['{..phase}', 'Running Succeeded'],
    ['name={.items[1].metadata.name} phase={.items[1].status.phase}', 'name=job phase=Succeeded'],
    ['{.items[0].metadata.labels}', '{"app.kubernetes.io/name":"web"}'],
    ['{.items[5].metadata.name}', ''],
    ['{.nothing.here}', ''],
    ['{.kind}', 'PodList'],
  ])('%s', (template, want) => {
    expect(jsonPath(template, list)).toBe(want);
  });

  it('refuses malformed templates, saying what is wrong', () => {
    expect(() => jsonPath('{.items', list)).toThrow(JsonPathError);
    expect(() => jsonPath('{range .items[*]}{.metadata.name}', list)).toThrow(/range.*without.*end/);
    expect(() => jsonPath('{.a}{end}', list)).toThrow(/end.*without.*range/);
    expect(() => jsonPath('{}', list)).toThrow(/empty action/);
  });
});

describe('-o values', () => {
  it('takes the kubectl formats and checks a template at once', () => {
    for (const v of ['wide', 'json', 'yaml', 'name', 'jsonpath={.status.phase}']) expect(parseOutput(v)).toBe(v);
    expect(() => parseOutput('xml')).toThrow(/expected wide, json, yaml, name or jsonpath=TEMPLATE/);
    expect(() => parseOutput('jsonpath=')).toThrow(/needs a template/);
    expect(() => parseOutput('jsonpath={range .items[*]}')).toThrow(/without \{end\}/);
  });
});
