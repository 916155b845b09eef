#!/bin/sh
# FastNetMon notify_script_path: hands every call to fnm_spool notify.
exec /usr/local/bin/fnm_spool notify "$@"
