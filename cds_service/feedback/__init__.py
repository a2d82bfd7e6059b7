"""Card feedback: which cards this service issued, what clinicians did with them, and what that teaches.

Jobs, one module each: `settings` (environment), `body` (the CDS Hooks 2.0 feedback body),
`store` (the database and its migrations), `analytics` (override figures per rule),
`page` (the admin report as HTML), `commands` (`cds-service db ...` and `cds-service report`).
"""
