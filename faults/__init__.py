"""The fault operators: what each development fault does to a network (``model.py``), a trainer or a dataset
(``training.py``: the paper's; ``mutation.py``: DeepCrime's operators); ``FaultInjector.py`` is their table.

Here too, because the presets name them and a command line is parsed without torch: the families faults come in.
"""

#: the faults' families: the paper's twelve, the DL-mutation operators, and a user's (``register_fault``'s default)
FAMILIES = ("paper", "mutation", "custom")
PAPER, MUTATION, CUSTOM = FAMILIES
