export { SpdySession, SpdyStream } from './session.js';
export { FrameReader, HeaderCodec, controlFrame, dataFrame, encodeHeaderBlock, decodeHeaderBlock, FrameType, FLAG_FIN, type Headers, type Frame } from './framing.js';
