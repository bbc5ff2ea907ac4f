# Shared by the sbatch templates in this directory (sourced, not run). Needs bash and Slurm's
# srun/scontrol on PATH; every function reads the SLURM_* variables of the running job.

# The first node of the allocation hosts the c10d rendezvous (torchrun --rdzv-endpoint).
slurm_rendezvous() {
    # No `| head -n 1`: under pipefail, head closing the pipe early kills scontrol with SIGPIPE.
    local hosts
    hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
    MASTER_ADDR=${hosts%%$'\n'*}
    MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 1000))}  # per job: two jobs on one node do not clash
    export MASTER_ADDR MASTER_PORT
}

# Sets the array TORCHRUN to the launcher of one node (every node runs the same line; the c10d
# rendezvous on the first node assigns the ranks). Elastic restarts are off: a failed rank fails
# the step, and recovery is the requeue + auto-resume below.
#   torchrun_args NPROC_PER_NODE; srun ... "${TORCHRUN[@]}" ENTRY_SCRIPT ARGS...
torchrun_args() {
    TORCHRUN=(torchrun --nnodes="$SLURM_NNODES" --nproc-per-node="$1"
        --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"
        --max-restarts=0)
}

# Runs one srun step in the background and waits for it, so that the batch shell can react to
# Slurm's warning signal (#SBATCH --signal=B:USR1@SECONDS) before the time limit:
#   on USR1, SIGTERM goes to the step (the trainer may save), then after GRACE_S seconds the job is
#   requeued (it restarts from the newest complete checkpoint in checkpoint.save_dir) unless it has
#   already been requeued MAX_RESTARTS times. Returns the step's exit status otherwise.
#   run_requeueable GRACE_S MAX_RESTARTS SRUN_ARGS...
run_requeueable() {
    local grace=$1 max_restarts=$2
    shift 2
    local restarts=${SLURM_RESTART_COUNT:-0}
    _on_warning() {
        echo "[$(date -u +%FT%TZ)] job $SLURM_JOB_ID: time limit near (restart $restarts of $max_restarts)"
        kill -TERM "$STEP_PID" 2>/dev/null || true
        local waited=0
        while kill -0 "$STEP_PID" 2>/dev/null && [ "$waited" -lt "$grace" ]; do
            sleep 1
            waited=$((waited + 1))
        done
        if [ "$restarts" -lt "$max_restarts" ]; then
            echo "[$(date -u +%FT%TZ)] requeueing job $SLURM_JOB_ID; it resumes from its last checkpoint"
            scontrol requeue "$SLURM_JOB_ID"
        else
            echo "[$(date -u +%FT%TZ)] job $SLURM_JOB_ID: not requeued (MAX_RESTARTS=$max_restarts reached)"
        fi
        exit 0
    }
    trap _on_warning USR1
    srun "$@" &
    STEP_PID=$!
    local rc=0
    wait "$STEP_PID" || rc=$?
    # `wait` also returns (>128) when USR1 arrives; the trap has exited by then, so rc is the step's.
    trap - USR1
    return "$rc"
}
