#!/usr/bin/env bash
# Makes sure the MariaDB server the tests use answers on 127.0.0.1:3306 (root, empty password, db `test`).
# Starts the local server when it is installed and stopped; installs it from Debian when missing.
set -euo pipefail
ping() { mariadb-admin --protocol=tcp -h127.0.0.1 -P3306 -uroot ping >/dev/null 2>&1; }
if ping; then
  mariadb --protocol=tcp -h127.0.0.1 -uroot -e 'CREATE DATABASE IF NOT EXISTS test'
  exit 0
fi
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  echo "mariadb: server not installed; installing mariadb-server" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
fi
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
for _ in $(seq 1 60); do
  if ping; then
    mariadb --protocol=tcp -h127.0.0.1 -uroot -e 'CREATE DATABASE IF NOT EXISTS test'
    echo "mariadb: up" >&2
    exit 0
  fi
  sleep 0.5
done
echo "mariadb: did not come up on 127.0.0.1:3306" >&2
exit 1
