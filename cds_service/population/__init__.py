"""Population replay (`cds-service replay`): the cards every rule would show over a whole FHIR Bulk Data
export, evaluated on Dask through the HTTP service's own code path (CdsService.call).

Jobs, one module each: `export` (the NDJSON files, their chunks, each resource's patient), `search` (the
prefetch templates answered in memory), `request` (a patient's hook request), `tasks` (what the workers
run: the shuffle by patient and the evaluation), `summary` (figures and the printed table), `page`
(report.html), `command` (the CLI and the Dask cluster).
"""
