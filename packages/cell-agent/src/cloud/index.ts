// The cloud the cell runs on, seen from the inside: instance metadata (AWS IMDSv2, the GCE
// metadata server) and the notices that announce the instance's end.
export { ImdsClient, DEFAULT_IMDS_URL } from './imds.js';
export { GceMetadataClient, DEFAULT_GCE_METADATA_URL } from './gce-metadata.js';
export { watchInstanceNotices, readNotices, readGceNotices, type NoticeWatcher, type WatchOptions } from './notices.js';
