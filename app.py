"""KD-Lens web app: ``python app.py [--preload]`` (or ``make run``) serves it on
http://127.0.0.1:7860.

This script only starts the app: the tabs live in the ``app/`` package (one module per tab,
wired by ``app.ui.build_app``). ``import app`` below finds that package, not this file: a
folder wins over a module of the same name on the same path entry.
"""

from __future__ import annotations

import app

if __name__ == "__main__":
    app.main()
