"""Run planning: a scenario (model, recipe, cluster, batch, samples) -> step time, memory, cost."""

from vlscale.plan.config import PlanConfig, make_plan_config
from vlscale.plan.planner import PlanResult, plan

__all__ = ["PlanConfig", "PlanResult", "make_plan_config", "plan"]
