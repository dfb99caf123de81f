export { SpdySession, SpdyStream } from './session.js';
export {
  FrameReader,
  HeaderCodec,
  HeaderBlockTooLarge,
  MAX_HEADER_BLOCK,
  MAX_CONTROL_LENGTH,
  controlFrame,
  dataFrame,
  encodeHeaderBlock,
  decodeHeaderBlock,
  FrameType,
  FLAG_FIN,
  type Headers,
  type Frame,
} from './framing.js';
