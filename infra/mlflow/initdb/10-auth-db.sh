#!/bin/sh
# The basic-auth app keeps users and permissions in their own database, beside the tracking store.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname mlflow -c "CREATE DATABASE mlflow_auth"
