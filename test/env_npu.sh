#!/bin/bash
# CANN (Ascend NPU) environment for the launch scripts, as in Ascend's ModelZoo scripts. Meant to be sourced:
#   source test/env_npu.sh
# Without a CANN install it changes nothing but a warning, so it can be sourced on any machine.
# The install root is $CANN_INSTALL_PATH if set, else the Install_Path of /etc/Ascend/ascend_cann_install.info,
# else /usr/local/Ascend.

if [ -z "${CANN_INSTALL_PATH:-}" ]; then
  if [ -f /etc/Ascend/ascend_cann_install.info ]; then
    CANN_INSTALL_PATH=$(grep Install_Path /etc/Ascend/ascend_cann_install.info | cut -d "=" -f 2)
  else
    CANN_INSTALL_PATH=/usr/local/Ascend
  fi
fi

cann_set_env=""
for candidate in "${CANN_INSTALL_PATH}/ascend-toolkit/set_env.sh" "${CANN_INSTALL_PATH}/nnae/set_env.sh"; do
  if [ -z "$cann_set_env" ] && [ -f "$candidate" ]; then
    cann_set_env=$candidate
  fi
done

if [ -z "$cann_set_env" ]; then
  echo "env_npu.sh: no CANN set_env.sh under ${CANN_INSTALL_PATH}; environment unchanged" >&2
else
  source "$cann_set_env"

  # Host logs: not on the console, errors only, no event logs.
  export ASCEND_SLOG_PRINT_TO_STDOUT=0
  export ASCEND_GLOBAL_LOG_LEVEL=3
  export ASCEND_GLOBAL_EVENT_ENABLE=0
  # Asynchronous operator dispatch (task queue) and the enhanced (FFTS+) scheduling.
  export TASK_QUEUE_ENABLE=1
  export ASCEND_ENHANCE_ENABLE=1

  # Device logs at error level and device event logs off (msnpureport comes with the driver).
  if command -v msnpureport > /dev/null 2>&1; then
    for device in 0 1 2 3 4 5 6 7; do
      msnpureport -g error -d "$device" > /dev/null 2>&1
    done
    msnpureport -e disable > /dev/null 2>&1
  fi

  # The Python install's and torch's own libraries ahead of the system ones.
  python_libs=$(python3 - <<'PYTHON'
import os
import site
import sysconfig

paths = [sysconfig.get_config_var("LIBDIR")]
paths += [os.path.join(p, "torch", "lib") for p in site.getsitepackages() if os.path.isdir(os.path.join(p, "torch"))]
print(":".join(p for p in paths if p))
PYTHON
  )
  export LD_LIBRARY_PATH=${python_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
unset cann_set_env candidate device python_libs
