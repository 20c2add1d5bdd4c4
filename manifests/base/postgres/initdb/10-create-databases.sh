#!/bin/bash
# Creates the roles and databases of AutoFT Pipelines: `mlflow` and `optuna`, each owned by the role of the
# same name whose password is read from the mounted secret (never from the command line or the
# environment). The official postgres image runs this once, when the data directory is first initialised;
# to change a password later, use ALTER ROLE (see docs/deploy.md).
set -euo pipefail

secrets="${AUTOFT_DB_SECRETS_DIR:-/run/secrets/postgres}"
mlflow_password="$(<"$secrets/MLFLOW_DB_PASSWORD")"
optuna_password="$(<"$secrets/OPTUNA_DB_PASSWORD")"

# psql variables (:'name') quote the passwords as SQL literals; the heredoc is quoted so the shell
# expands nothing in it.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-postgres}" \
  -v mlflow_password="$mlflow_password" -v optuna_password="$optuna_password" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE optuna LOGIN PASSWORD :'optuna_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE optuna OWNER optuna;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE optuna FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE mlflow TO mlflow;
GRANT CONNECT, TEMPORARY ON DATABASE optuna TO optuna;
SQL
echo "autoft: created databases mlflow and optuna"
