// Ink draws nothing but the last frame when it believes it runs in CI (is-in-ci reads CI, CI_* and
// CONTINUOUS_INTEGRATION when Ink is imported). The TUI tests drive a terminal, CI or not, as the CLI does.
delete process.env.CI;
delete process.env.CONTINUOUS_INTEGRATION;
for (const k of Object.keys(process.env)) if (k.startsWith('CI_')) delete process.env[k];
