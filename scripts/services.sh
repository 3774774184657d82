# shellcheck shell=bash
# Start MariaDB, RabbitMQ and Redis on this machine where they are down, with the commands
# of DESIGN.md §6, and wait up to 60 s for each port. A service that already answers on
# its port is left alone. Sourced by scripts/test and .ci/run (which call
# tuna_start_services); it can also be run on its own: bash scripts/services.sh
#
# The service-backed tests expect: MariaDB on 127.0.0.1:3306 (root, empty password),
# RabbitMQ on 127.0.0.1:5672 (guest/guest), Redis on 127.0.0.1:6379.

TUNA_SERVICES=("MariaDB:3306" "RabbitMQ:5672" "Redis:6379")
TUNA_SERVICE_WAIT_S=60

tuna_port_open() {
    # bash's /dev/tcp: a refused connection to 127.0.0.1 fails at once.
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

tuna_start_service() {
    case "$1" in
        MariaDB)
            start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
            ;;
        RabbitMQ)
            rabbitmq-server -detached
            ;;
        Redis)
            redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
                --dir /var/lib/redis --logfile /var/log/redis/ci.log
            ;;
    esac
}

# Returns 0 when all three answer, 1 (after naming them) when some still do not.
tuna_start_services() {
    local entry name port started=() down=()
    for entry in "${TUNA_SERVICES[@]}"; do
        name="${entry%%:*}" port="${entry##*:}"
        if tuna_port_open "$port"; then
            echo "$name is up on 127.0.0.1:$port"
            continue
        fi
        echo "$name is down on 127.0.0.1:$port: starting it"
        if tuna_start_service "$name"; then
            started+=("$entry")
        else
            echo "warning: starting $name failed (it needs to be installed, and root for the commands above)" >&2
            down+=("$name")
        fi
    done

    local deadline=$((SECONDS + TUNA_SERVICE_WAIT_S))
    for entry in ${started[@]+"${started[@]}"}; do
        name="${entry%%:*}" port="${entry##*:}"
        until tuna_port_open "$port"; do
            if ((SECONDS >= deadline)); then
                echo "warning: $name did not open 127.0.0.1:$port within ${TUNA_SERVICE_WAIT_S} s" >&2
                down+=("$name")
                continue 2
            fi
            sleep 0.5
        done
        echo "$name is up on 127.0.0.1:$port"
    done

    if ((${#down[@]})); then
        echo "services still down: ${down[*]}" >&2
        return 1
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    tuna_start_services
fi
