"""Dev tooling: what a source checkout has for tests, benchmarks and the demo, and the product does not ship.

* ``runner``: the local Functions runner (HTTP, queue and timer triggers of the app's registrations) behind
  ``guestsync serve``, the tests and the benchmarks.
* ``graphsim``: the Microsoft Graph simulator (users, delta, subscriptions, notifications, sign-in).
* ``localenv``: the local environment: Azurite, a Samba AD DC, a test PKI, and the whole stack wired together.
* ``demo``: ``make demo`` (``guestsync demo``), the whole job on this machine.

Neither the wheel (pyproject.toml packages only ``shared``) nor the function app package (.funcignore) holds
this package. It imports the product; the product imports it only in ``guestsync serve`` and ``guestsync demo``,
which say so in one line when it is missing.
"""
