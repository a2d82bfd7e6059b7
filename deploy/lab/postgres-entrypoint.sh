#!/bin/sh
# Starts PostgreSQL as the official postgres image does: on the first start (an empty $PGDATA) it makes the
# cluster with POSTGRES_USER as superuser (password POSTGRES_PASSWORD, required from the network) and the
# database POSTGRES_DB; then it runs the server as the postgres user, as PID 1, listening on every address.
set -eu
: "${POSTGRES_PASSWORD:?is required}"
user="${POSTGRES_USER:-postgres}"
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
    chown postgres "$password_file"
    as_postgres initdb --pgdata="$PGDATA" --username="$user" --pwfile="$password_file" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    as_postgres pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
    database="${POSTGRES_DB:-$user}"
    [ "$database" = postgres ] || as_postgres createdb --username="$user" "$database"
    as_postgres pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -c listen_addresses='*'
