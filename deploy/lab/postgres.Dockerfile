# The lab's database where the postgres image cannot be pulled: Debian's PostgreSQL (15), started the way the
# official image starts, so that docker-compose.yml's db service works unchanged (deploy/lab/postgres-debian.yml):
# POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB make the role and database on the first start, the data is
# in /var/lib/postgresql/data (the lab's volume), and pg_isready is on PATH for the health check.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && pg_dropcluster 15 main \
    && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown (SIGTERM's smart shutdown would wait for every client to leave).
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint.sh"]
