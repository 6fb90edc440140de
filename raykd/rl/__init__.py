"""RLlib integration: Dual Policy Distillation (two peer PPO learners distilling from each other).

Import from the submodules (``raykd.rl.dpd``, ``raykd.rl.runner``, ``raykd.rl.settings``); this
package marker stays light so that reading a config does not import RLlib.
"""
