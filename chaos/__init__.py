"""The reliability proof suite: crash storms, outages, frozen nodes, a soak and hostile input.

Run ``python -m chaos`` (``make chaos``) for every scenario, ``--short`` (``make chaos SHORT=1``)
for the form CI runs. See ``chaos/README_SECTION.md`` for what each scenario proves.
"""
