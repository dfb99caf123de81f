// ESLint for the whole repository, run once from the root by `npm run lint` (and so by `npm test`).
// typescript-eslint's recommended rules, plus the type-aware few that catch the bugs async gRPC
// and stream code has (a promise nobody awaits or catches, a promise where a callback is
// expected), and import rules that keep the packages apart: a package reaches another only
// through its `@cello/x` public surface, and imports only what its package.json declares.
import js from '@eslint/js';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';
import { importX } from 'eslint-plugin-import-x';
import globals from 'globals';
import { readdirSync } from 'node:fs';
import tseslint from 'typescript-eslint';

// The TypeScript projects that type-aware rules read: each package's sources with its tests.
const projects = ['./tsconfig.eslint.json'];

export default tseslint.config(
  {
    ignores: ['**/dist/', '**/gen/', '**/node_modules/', '**/.turbo/', '**/.test-results/', 'coverage/', 'out/'],
  },
  {
    linterOptions: { reportUnusedDisableDirectives: 'error' },
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  importX.flatConfigs.recommended,
  importX.flatConfigs.typescript,
  {
    settings: {
      'import-x/resolver-next': [createTypeScriptImportResolver({ project: projects })],
    },
    rules: {
      // A relative path into another package skips its public surface (and its build).
      'import-x/no-relative-packages': 'error',
      'import-x/no-cycle': ['error', { ignoreExternal: true }],
      // TypeScript reports a name exported twice; this rule also flags the star exports that an
      // explicit export disambiguates (proto's cell.ts naming one copy of ts-proto's helpers).
      'import-x/export': 'off',
      'no-restricted-imports': [
        'error',
        { patterns: [{ group: ['@cello/*/src/*', '@cello/*/dist/*'], message: 'Import another package through its public surface (@cello/x), not its files.' }] },
      ],
      // Type-checked already, and slow: TypeScript reports what these would.
      'import-x/named': 'off',
      'import-x/namespace': 'off',
      'import-x/default': 'off',
      'import-x/no-named-as-default-member': 'off',
      'import-x/no-named-as-default': 'off',
      'import-x/no-unresolved': 'off',
      // A binding assigned once after a closure that reads it later is declared with let on purpose.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // `_name` marks a parameter or binding kept on purpose (a callback's shape, a destructured rest).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true }],
    },
  },
  // A package imports only what its own package.json declares (tests, benches and scripts may
  // use devDependencies, and the root's shared tooling: vitest, typescript, esbuild).
  ...readdirSync(new URL('packages', import.meta.url)).map((name) => ({
    files: [`packages/${name}/**`],
    rules: {
      'import-x/no-extraneous-dependencies': [
        'error',
        { packageDir: [`${import.meta.dirname}/packages/${name}`, import.meta.dirname], devDependencies: ['**/test/**', '**/bench/**', '**/scripts/**', '**/vitest*.config.ts'] },
      ],
    },
  })),
  {
    files: ['*.js', 'scripts/**', 'bench/**'],
    rules: { 'import-x/no-extraneous-dependencies': ['error', { packageDir: import.meta.dirname }] },
  },
  {
    files: ['packages/*/src/**/*.ts', 'packages/*/test/**/*.ts'],
    languageOptions: {
      parserOptions: { project: projects, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false, attributes: false } }],
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/only-throw-error': 'error',
      // A type-only import is erased: say so, so that isolatedModules builds and readers agree.
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
    },
  },
  {
    // Plain Node scripts (setup, test, start, benches): no type information.
    files: ['**/*.mjs', '**/*.js'],
    languageOptions: {
      globals: globals.node,
    },
  },
);
