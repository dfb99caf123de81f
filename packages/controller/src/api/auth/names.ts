/** The user the virtual node calls the API as (group system:masters); it may name whom it relays for. */
export const VIRTUAL_NODE_USER = 'system:virtual-node';
