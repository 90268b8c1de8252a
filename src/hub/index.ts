// Hugging Face Hub models for graft: what the rest of graft calls (graft download, preparation's model
// resolution). The files live in the shared Hugging Face cache; see README.md here for how.
export { isRepoId, parseRepoRef, type RepoRef } from './repoId.js';
export { ensureModelFiles, DownloadInterrupted, type EnsureOptions, type EnsureResult } from './download.js';
export { FAMILY_FILES, familyFiles, familyForRepo, knownFamilies, selectFiles, indexShards, type FamilyFiles, type FileChoice, type ModelPart, type Selection } from './select.js';
export { HubError } from './errors.js';
export { hubSettings, hubCacheDir, type HubSettings } from './settings.js';
export { describeEvent, progressLine, lineLogger, terminalReporter, formatBytes, type HubEvent, type ProgressCallback } from './progress.js';
