// cello.controller.v1: the controller's API, used by cellctl.
export * from './gen/cello/controller/v1/controller.js';
