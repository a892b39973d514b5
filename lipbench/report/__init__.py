"""Report: leaderboards (terminal, Markdown, CSV, LaTeX, HTML) and plots (PNG + SVG) from results folders.

Data flows one way: records (one JSON per job) -> ``runs`` (one row per run, audits folded in) ->
``board`` (one row per dataset, budget, layer, size and settings; seeds as mean ± std over the runs
that finished ``ok``) -> ``cells`` (formatted tables) and ``notes`` -> ``sections`` (the page, format
free) -> the renderers (``markdown``, ``html``, ``latex``, ``terminal``); ``plots`` are registered one per
function. ``pages.write_report`` runs all of it. Failed runs stay in as rows with their status.
Accuracies are in percent.

Runs count as seeds of one another only when everything but the seed matches: the training settings
(learning rate, batch size, precision, ...) and the device. Where runs of one layer and size differ in
those, each setting gets its own row, labelled by what differs.
"""
