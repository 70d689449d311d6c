# Helpers shared by the launch scripts (sourced, not run).
# shellcheck shell=bash

# One word as the shell reads it back: bare when safe, else in single quotes.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# A command as one line the shell reads back word for word.
command_line() {
  local word line=""
  for word in "$@"; do
    line+=" $(quote "$word")"
  done
  printf '%s' "${line# }"
}

# Prints a command, then runs it unless DRY_RUN is set.
run() {
  echo "+ $(command_line "$@")"
  if ((!DRY_RUN)); then
    "$@"
  fi
}
