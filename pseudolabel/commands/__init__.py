"""The ``sap`` commands, one module per stage or tool; ``cli.py`` assembles them into one app.

Each command is thin: options in, one library call, the summary out. Library modules are imported
inside the commands so that ``sap --help`` stays fast.
"""

from . import basics, loop, proposals, refine, runs, select, tools, train

#: the command modules in the order ``sap --help`` lists them
MODULES = (basics, proposals, select, refine, train, tools, loop, runs)
