"""GRPO for IRPO: group-relative advantages (``advantages``), the losses (``losses``) and the
jitted rollout/update steps (``steps``)."""
