#!/bin/sh
# What the official image's entry point does, for the commands compose runs:
# options alone are redis-server's; a server started without a configuration file
# listens on every interface with protected mode off (so other containers reach it;
# a password is set with --requirepass); it runs as "redis", owning /data.
set -e
case "$1" in
    -*) set -- redis-server "$@" ;;
esac
if [ "$1" = redis-server ]; then
    case "$2" in
        *.conf) ;;
        *)
            shift
            set -- redis-server --bind '* -::*' --protected-mode no "$@"
            ;;
    esac
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis /data
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
