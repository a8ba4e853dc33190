"""Fleet mode: several boxes serve as one on Ray Serve (the ``fleet`` extra).

Modules that need Ray (``replica``, ``engine``, ``vision``, ``cluster``, ``router``) import
it at the top; the rest (``errors``, ``token``, ``node``, ``wire``, ``headers``,
``placement``, ``prefix``, ``load``) are plain Python, so the box's CLI can refuse a join or
print help on a box without Ray.
Nothing outside this package imports Ray, and appliance/ imports this package only when
fleet mode is on.
"""
