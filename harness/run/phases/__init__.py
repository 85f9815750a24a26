"""The phases of one cell, one module each job; ``harness.run.cell.run_cell`` runs them in order.

``context`` what every phase works on; ``parts`` what each returns; ``build``;
``warm`` (compile, warm-up, the steady plan); ``timed`` (steady, device_step);
``untimed`` (heap, memory); ``stats``; ``payload`` (the worker's result).
"""
