#!/bin/sh
# "make run": nginx in the foreground with the module and an example
# configuration.  With DATO_API_TOKEN set it talks to the real DatoCMS API
# (DATO_API_URL overrides the address); without it, to the mock API in t/.
# It serves the status page and writes an access log with the $dato_*
# variables, both under build/run/.
set -eu

: "${RUN_PORT:=8080}" "${MOCK_PORT:=8081}" "${NGINX_BIN:=/usr/sbin/nginx}"
top=$(cd "$(dirname "$0")/.." && pwd)
: "${MODULE:=$top/build/ngx_http_dato_module.so}"
dir=$top/build/run
mkdir -p "$dir/body"
chmod 755 "$top/build" "$dir" "$dir/body"

mock=""
if [ -n "${DATO_API_TOKEN:-}" ]; then
    url=${DATO_API_URL:-https://site-api.datocms.com}
    printf '%s\n' "$DATO_API_TOKEN" > "$dir/token"
    echo "talking to $url with the token in \$DATO_API_TOKEN"
else
    url=http://127.0.0.1:$MOCK_PORT
    printf 'test-token\n' > "$dir/token"
    perl "$top/t/mock/dato_mock.pl" --port "$MOCK_PORT" \
        --log "$dir/mock.log" --lifetime 86400 > "$dir/mock.out" 2>&1 &
    mock=$!
    trap 'kill $mock 2>/dev/null || true' EXIT INT TERM
    i=0
    until grep -q READY "$dir/mock.out" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 50 ] || { cat "$dir/mock.out"; exit 1; }
        sleep 0.1
    done
    echo "no DATO_API_TOKEN: talking to the mock API at $url"
    echo "(what it receives is in $dir/mock.log)"
fi
chmod 600 "$dir/token"

cat > "$dir/nginx.conf" <<CONF
load_module $MODULE;
worker_processes 2;
pid $dir/nginx.pid;
error_log stderr info;
events { worker_connections 1024; }
http {
    client_body_temp_path $dir/body;

    log_format dato '\$time_local \$remote_addr "\$request" \$status '
                    'jobs=\$dato_job_ids records=\$dato_records';
    access_log $dir/access.log dato;

    dato_api_url $url;
    dato_api_token_file $dir/token;

    server {
        listen 127.0.0.1:$RUN_PORT;

        location = /webhooks/dato {
            dato_publish;
        }

        location = /dato/status {
            allow 127.0.0.1;
            deny all;
            dato_publish_status;
        }
    }
}
CONF

cat <<MSG
nginx on http://127.0.0.1:$RUN_PORT, Ctrl-C stops it.  Try:

  curl -i -H 'Content-Type: application/json' \\
       -d '{"ids":["X9_l7IdvRq26r7e2wn353Q"]}' \\
       http://127.0.0.1:$RUN_PORT/webhooks/dato

status page:  http://127.0.0.1:$RUN_PORT/dato/status
              http://127.0.0.1:$RUN_PORT/dato/status?format=prometheus
access log:   $dir/access.log  (jobs=\$dato_job_ids records=\$dato_records)
error log:    this terminal (error_log stderr info)

MSG
env -u NGINX "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -e stderr -g 'daemon off;'
