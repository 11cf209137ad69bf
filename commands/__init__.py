"""What each ``main_*`` script does once its command line is parsed, a module per script (``train``, ``fit``,
``cache``, ``evaluate``, ``realtime``, ``validate``). A script builds its parser from the light
``pipeline/flags.py`` and ``launchers`` alone and parses before it imports its command, so ``--help`` and a usage
error answer at once, before torch loads."""
