"""The ``sap`` commands, one module per command or stage (``imports`` holds `sap import`, ``tools``
`sap eval` and `sap viz`, ``refine`` also `sap corrupt`); ``cli.py`` assembles them into one app.

Each command is thin: options in, one library call, the summary out. Library modules are imported
inside the commands so that ``sap --help`` stays fast.
"""

from . import demo, env, export, imports, pipeline, points, proposals, refine, review, select, tools, train

#: the command modules in the order ``sap --help`` lists them
MODULES = (env, points, proposals, select, refine, train, tools, review, export, imports, pipeline, demo)
