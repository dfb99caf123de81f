// A pod's status conditions (PodScheduled, Ready, ...), set the way the kubelet sets them: the
// transition time moves only when the condition's value does.
import type { ConditionStatus, PodCondition, PodStatus } from '@cello/proto/cell';

export function setCondition(status: PodStatus, type: string, value: ConditionStatus, reason = '', message = ''): void {
  const c = status.conditions.find((x) => x.type === type);
  if (c) {
    if (c.status !== value) c.lastTransitionTime = new Date();
    c.status = value;
    c.reason = reason;
    c.message = message;
    return;
  }
  const cond: PodCondition = { type, status: value, reason, message, lastTransitionTime: new Date(), lastProbeTime: undefined };
  status.conditions.push(cond);
}
