// The cloud the cell runs on, seen from the inside: instance metadata (IMDSv2) and the notices
// that announce the instance's end.
export { ImdsClient, DEFAULT_IMDS_URL } from './imds.js';
export { watchInstanceNotices, readNotices, type NoticeWatcher, type WatchOptions } from './notices.js';
