
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_sched.h"
#include "ngx_http_dato_shm.h"


/* calls out at once per token, all workers together */
#define NGX_HTTP_DATO_OUT_MAX       64

/* the budget until the API has announced one, and the calls out then */
#define NGX_HTTP_DATO_RATE_DEFAULT  50
#define NGX_HTTP_DATO_PROBE_MAX     4

/* how long a wait is when only a call still out can end it */
#define NGX_HTTP_DATO_OUT_WAIT      50

/* a call out longer than this may belong to a dead worker: look */
#define NGX_HTTP_DATO_OUT_CHECK     1000

/* what others spent is forgotten after two windows without news */
#define NGX_HTTP_DATO_OTHERS_TTL    (2 * NGX_HTTP_DATO_API_WINDOW)

/* X-RateLimit-Reset values from here on can only be Unix times */
#define NGX_HTTP_DATO_EPOCH_MIN     1000000000


typedef struct {
    /* 0 when free; else the ticket the caller holds */
    ngx_uint_t                    ticket;
    ngx_pid_t                     pid;
    ngx_int_t                     process;
    ngx_msec_t                    started;
} ngx_http_dato_out_t;


struct ngx_http_dato_sched_s {
    ngx_http_dato_sched_t        *next;
    uint32_t                      key;

    ngx_msec_t                    paused_until;

    /* the pace: when the next call is due, see ngx_http_dato_sched_pace() */
    ngx_msec_t                    due;

    /* a publish that was held asks again then: polls leave it the call */
    ngx_msec_t                    wanted;
    ngx_uint_t                    wanting;

    /* the last X-RateLimit-Limit and -Remaining, 0 before any */
    ngx_uint_t                    announced;
    ngx_uint_t                    remaining;

    /* the calls in the API's window that were not ours, when last told */
    ngx_uint_t                    others;
    ngx_msec_t                    others_at;

    /* the smallest dato_rate_limit set for the token, 0 for none */
    ngx_uint_t                    cap;

    ngx_uint_t                    generation;
    ngx_uint_t                    reset_warned;

    ngx_http_dato_out_t           out[NGX_HTTP_DATO_OUT_MAX];

    /* when the last calls were answered: a ring, newest at "head" */
    ngx_uint_t                    head;
    ngx_uint_t                    nlog;
    ngx_msec_t                    log[NGX_HTTP_DATO_RATE_MAX];
};


/* the head of the entries in the zone */
typedef struct {
    ngx_http_dato_sched_t        *first;
} ngx_http_dato_sched_root_t;


static ngx_http_dato_sched_t *ngx_http_dato_sched_entry(
    ngx_http_dato_rate_t *rate, ngx_slab_pool_t **shpool);
static ngx_msec_t ngx_http_dato_sched_now(void);
static void ngx_http_dato_sched_reclaim(ngx_http_dato_sched_t *s,
    ngx_msec_t now, ngx_msec_t timeout);
static void ngx_http_dato_sched_log(ngx_http_dato_sched_t *s,
    ngx_msec_t now);
static ngx_uint_t ngx_http_dato_sched_out(ngx_http_dato_sched_t *s);
static ngx_uint_t ngx_http_dato_sched_count(ngx_http_dato_sched_t *s,
    ngx_msec_t now, ngx_msec_t window);
static ngx_msec_t ngx_http_dato_sched_room(ngx_http_dato_sched_t *s,
    ngx_msec_t now, ngx_msec_t window, ngx_uint_t limit, ngx_uint_t want);
static ngx_uint_t ngx_http_dato_sched_budget(ngx_http_dato_sched_t *s,
    ngx_msec_t now);
static ngx_msec_t ngx_http_dato_sched_pace(ngx_http_dato_sched_t *s,
    ngx_msec_t gap, ngx_uint_t limit, ngx_msec_t now);
static ngx_uint_t ngx_http_dato_sched_burst(ngx_uint_t limit);
static ngx_msec_t ngx_http_dato_sched_pause(ngx_http_dato_sched_t *s,
    ngx_int_t reset, ngx_uint_t *warn);


/* the zone's bytes for one token: what dato_zone_size must allow for */

size_t
ngx_http_dato_sched_size(void)
{
    return sizeof(ngx_http_dato_sched_t);
}


/*
 * Called with the zone locked or not yet shared.  Every token of the new
 * configuration gets its entry now, so that none is made or evicted at
 * run time; an old zone's entries keep their budget and pauses.
 */

ngx_int_t
ngx_http_dato_sched_init_zone(ngx_slab_pool_t *shpool, void **root,
    ngx_http_dato_sched_key_t *keys, ngx_uint_t nkeys,
    ngx_http_dato_sched_t **entries)
{
    ngx_uint_t                   i;
    ngx_http_dato_sched_t       *s;
    ngx_http_dato_sched_root_t  *r;

    r = *root;

    if (r == NULL) {
        r = ngx_slab_calloc_locked(shpool,
                                   sizeof(ngx_http_dato_sched_root_t));
        if (r == NULL) {
            return NGX_ERROR;
        }

        *root = r;
    }

    for (i = 0; i < nkeys; i++) {

        for (s = r->first; s; s = s->next) {
            if (s->key == keys[i].key) {
                break;
            }
        }

        if (s == NULL) {
            s = ngx_slab_calloc_locked(shpool,
                                       sizeof(ngx_http_dato_sched_t));
            if (s == NULL) {
                return NGX_ERROR;
            }

            s->key = keys[i].key;
            s->next = r->first;
            r->first = s;
        }

        /* for the status page; the configuration of this reload's */
        s->cap = keys[i].cap;

        entries[i] = s;
    }

    return NGX_OK;
}


/*
 * A worker that takes a dead one's place takes back the calls it had out
 * at once: their answers will never come.
 */

void
ngx_http_dato_sched_init_process(ngx_slab_pool_t *shpool, void *root)
{
    ngx_msec_t                   now;
    ngx_uint_t                   i;
    ngx_http_dato_sched_t       *s;
    ngx_http_dato_sched_root_t  *r = root;

    if (r == NULL) {
        return;
    }

    now = ngx_http_dato_sched_now();

    ngx_shmtx_lock(&shpool->mutex);

    for (s = r->first; s; s = s->next) {
        for (i = 0; i < NGX_HTTP_DATO_OUT_MAX; i++) {
            if (s->out[i].ticket && s->out[i].process == ngx_process_slot
                && s->out[i].pid != ngx_pid)
            {
                s->out[i].ticket = NGX_HTTP_DATO_NO_TICKET;
                ngx_http_dato_sched_log(s, now);
            }
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * 0 when a call may leave now (it holds "ticket" until it is reported or
 * released), or how many ms to wait.  A call that can wait (a job poll)
 * asks for "spare" more calls of room than it takes, so that it never
 * takes one that a publish is waiting for.
 */

ngx_msec_t
ngx_http_dato_sched_ask(ngx_http_dato_rate_t *rate, ngx_uint_t *ticket,
    ngx_uint_t spare)
{
    ngx_msec_t              now, wait, gap, w;
    ngx_uint_t              i, limit, pace;
    ngx_slab_pool_t        *shpool;
    ngx_http_dato_sched_t  *s;

    s = ngx_http_dato_sched_entry(rate, &shpool);
    now = ngx_http_dato_sched_now();

    ngx_shmtx_lock(&shpool->mutex);

    if ((ngx_msec_int_t) (s->paused_until - now) > 0) {
        wait = s->paused_until - now;
        goto done;
    }

    /* a poll gives way to a publish that waits for the next call */

    if (spare && s->wanting
        && (ngx_msec_int_t) (now - s->wanted) < NGX_HTTP_DATO_OUT_WAIT)
    {
        wait = NGX_HTTP_DATO_OUT_WAIT;
        goto done;
    }

    ngx_http_dato_sched_reclaim(s, now, rate->timeout);

    /* the API's window: what it announced, less what others spend */

    limit = ngx_http_dato_sched_budget(s, now);
    pace = limit;
    gap = NGX_HTTP_DATO_API_WINDOW / limit;

    wait = ngx_http_dato_sched_room(s, now, NGX_HTTP_DATO_API_WINDOW, limit,
                                    1 + spare);

    /* the operator's cap, over its own period */

    if (rate->cap) {
        w = ngx_http_dato_sched_room(s, now, rate->period, rate->cap,
                                     1 + spare);
        wait = ngx_max(wait, w);

        if (rate->period / rate->cap > gap) {
            gap = rate->period / rate->cap;
            pace = rate->cap;
        }
    }

    if (wait) {

        /*
         * the window is full: the pace's burst is credit for time without
         * calls, not for time the window held them, or each window would
         * begin with a burst of small calls and end with a stall
         */

        if (spare == 0) {
            w = now + wait + gap * (ngx_http_dato_sched_burst(pace) - 1);

            if ((ngx_msec_int_t) (w - s->due) > 0) {
                s->due = w;
            }
        }

        goto done;
    }

    /*
     * until an answer has announced the budget, a few calls at a time:
     * the default may be more than the API allows
     */

    if (s->announced == 0
        && ngx_http_dato_sched_out(s) >= NGX_HTTP_DATO_PROBE_MAX)
    {
        wait = NGX_HTTP_DATO_OUT_WAIT;
        goto done;
    }

    wait = ngx_http_dato_sched_pace(s, gap, pace, now);

    if (wait) {
        goto done;
    }

    for (i = 0; i < NGX_HTTP_DATO_OUT_MAX; i++) {
        if (s->out[i].ticket == NGX_HTTP_DATO_NO_TICKET) {
            break;
        }
    }

    if (i == NGX_HTTP_DATO_OUT_MAX) {
        wait = NGX_HTTP_DATO_OUT_WAIT;
        goto done;
    }

    /* a ticket names its slot and a generation, never 0 */

    s->generation++;
    *ticket = (s->generation << 8) | (i + 1);

    s->out[i].ticket = *ticket;
    s->out[i].pid = ngx_pid;
    s->out[i].process = ngx_process_slot;
    s->out[i].started = now;

    s->due = ((ngx_msec_int_t) (s->due - now) > 0 ? s->due : now) + gap;

    if (spare == 0) {
        s->wanting = 0;
    }

done:

    if (wait && spare == 0) {
        s->wanting = 1;
        s->wanted = now + wait;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return wait;
}


/*
 * The call of "ticket" was answered (status 0: it failed on the way, and
 * may have reached the API).  What the answer said of the budget is kept
 * for every worker; a 429 pauses them all.  Returns the pause, if any.
 */

ngx_msec_t
ngx_http_dato_sched_report(ngx_http_dato_rate_t *rate, ngx_uint_t ticket,
    ngx_uint_t status, ngx_int_t limit, ngx_int_t remaining, ngx_int_t reset,
    ngx_log_t *log)
{
    ngx_uint_t              i, own, used, warn, fresh;
    ngx_msec_t              now, pause, until;
    ngx_slab_pool_t        *shpool;
    ngx_http_dato_sched_t  *s;

    s = ngx_http_dato_sched_entry(rate, &shpool);
    now = ngx_http_dato_sched_now();
    pause = 0;
    warn = 0;
    fresh = 0;

    ngx_shmtx_lock(&shpool->mutex);

    i = (ticket & 0xff) - 1;

    /* a call taken back from it as stale is in the log already */

    if (i < NGX_HTTP_DATO_OUT_MAX && s->out[i].ticket == ticket) {
        s->out[i].ticket = NGX_HTTP_DATO_NO_TICKET;

        /*
         * stamped with the time of the answer: the call reached the API
         * before, so a window counted from here holds at least as many
         * calls as the API's own
         */

        ngx_http_dato_sched_log(s, now);
    }

    /* the headers are advice, and hostile input: only sane numbers */

    if (status && limit > 0) {
        s->announced = ngx_min((ngx_uint_t) limit, NGX_HTTP_DATO_RATE_MAX);

        if (remaining >= 0 && remaining <= limit) {
            s->remaining = ngx_min((ngx_uint_t) remaining, s->announced);
        }

        /*
         * the calls in the window that were not ours; a 429 says when the
         * window frees in its pause instead
         */

        if (status != 429 && remaining >= 0 && remaining <= limit) {
            own = ngx_http_dato_sched_out(s)
                  + ngx_http_dato_sched_count(s, now,
                                              NGX_HTTP_DATO_API_WINDOW);
            used = s->announced - s->remaining;

            s->others = used > own ? used - own : 0;
            s->others_at = now;
        }
    }

    if (status == 429) {
        /* a little spread, so that waiting workers do not wake together */

        pause = ngx_http_dato_sched_pause(s, reset, &warn)
                + (ngx_msec_t) ngx_random() % 250;
        until = now + pause;

        /*
         * the first 429 of a pause, in any worker, is said at error
         * level; those of calls that were out meanwhile are not
         */

        fresh = ((ngx_msec_int_t) (s->paused_until - now) <= 0);

        if ((ngx_msec_int_t) (until - s->paused_until) > 0) {
            s->paused_until = until;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (fresh) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "dato: the API answered 429 (too many requests): "
                      "API paused %M ms, every call with this token waits",
                      pause);
    }

    if (warn) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "dato: X-RateLimit-Reset \"%i\" is more than %d s, "
                      "read as %s; paused %M ms (logged once per token)",
                      reset, NGX_HTTP_DATO_PAUSE_MAX / 1000,
                      reset >= NGX_HTTP_DATO_EPOCH_MIN ? "a Unix time"
                                                        : "seconds, capped",
                      pause);
    }

    return pause;
}


/* the call of "ticket" never left: it costs nothing */

void
ngx_http_dato_sched_release(ngx_http_dato_rate_t *rate, ngx_uint_t ticket)
{
    ngx_uint_t              i;
    ngx_slab_pool_t        *shpool;
    ngx_http_dato_sched_t  *s;

    s = ngx_http_dato_sched_entry(rate, &shpool);

    ngx_shmtx_lock(&shpool->mutex);

    i = (ticket & 0xff) - 1;

    if (i < NGX_HTTP_DATO_OUT_MAX && s->out[i].ticket == ticket) {
        s->out[i].ticket = NGX_HTTP_DATO_NO_TICKET;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/* the calls per API window that this token may make now */

ngx_uint_t
ngx_http_dato_sched_limit(ngx_http_dato_rate_t *rate)
{
    ngx_uint_t              limit;
    ngx_slab_pool_t        *shpool;
    ngx_http_dato_sched_t  *s;

    s = ngx_http_dato_sched_entry(rate, &shpool);

    ngx_shmtx_lock(&shpool->mutex);
    limit = ngx_http_dato_sched_budget(s, ngx_http_dato_sched_now());
    ngx_shmtx_unlock(&shpool->mutex);

    return rate->cap ? ngx_min(limit, rate->cap) : limit;
}


/* called locked, for the status page */

void
ngx_http_dato_sched_state(void *root,
    ngx_http_dato_sched_state_t *state)
{
    ngx_msec_t                   now;
    ngx_http_dato_sched_t       *s, *first;
    ngx_http_dato_sched_root_t  *r = root;

    ngx_memzero(state, sizeof(ngx_http_dato_sched_state_t));

    if (r == NULL || r->first == NULL) {
        return;
    }

    now = ngx_http_dato_sched_now();

    /* the list is newest first: the first configured token is last */

    for (s = r->first, first = s; s; s = s->next) {
        first = s;

        if ((ngx_msec_int_t) (s->paused_until - now) > 0
            && s->paused_until - now > state->pause)
        {
            state->pause = s->paused_until - now;
        }
    }

    state->limit = ngx_http_dato_sched_budget(first, now);

    if (first->cap) {
        state->limit = ngx_min(state->limit, first->cap);
    }
    state->announced = first->announced;
    state->remaining = first->remaining;
}


static ngx_http_dato_sched_t *
ngx_http_dato_sched_entry(ngx_http_dato_rate_t *rate,
    ngx_slab_pool_t **shpool)
{
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = rate->zone->data;
    *shpool = ctx->shpool;

    return ctx->entries[rate->index];
}


/*
 * ngx_current_msec is as old as the event loop's iteration, and each
 * worker's differs; the log wants the time now, on one clock for all
 */

static ngx_msec_t
ngx_http_dato_sched_now(void)
{
#if (NGX_HAVE_CLOCK_MONOTONIC)
    struct timespec  ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        return (ngx_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
#endif

    return ngx_current_msec;
}


/*
 * A call out for longer than dato_api_timeout is over, whatever became of
 * it; one whose worker died (a crash, the OOM killer, kill -9) is over
 * now.  Either is counted as answered now.
 */

static void
ngx_http_dato_sched_reclaim(ngx_http_dato_sched_t *s, ngx_msec_t now,
    ngx_msec_t timeout)
{
    ngx_uint_t            i;
    ngx_msec_int_t        age;
    ngx_http_dato_out_t  *out;

    for (i = 0; i < NGX_HTTP_DATO_OUT_MAX; i++) {
        out = &s->out[i];

        if (out->ticket == NGX_HTTP_DATO_NO_TICKET) {
            continue;
        }

        age = (ngx_msec_int_t) (now - out->started);

        if (age < NGX_HTTP_DATO_OUT_CHECK) {
            continue;
        }

        if (age > (ngx_msec_int_t) (timeout + NGX_HTTP_DATO_OUT_CHECK)
            || (out->pid != ngx_pid && kill(out->pid, 0) == -1
                && ngx_errno == NGX_ESRCH))
        {
            out->ticket = NGX_HTTP_DATO_NO_TICKET;
            ngx_http_dato_sched_log(s, now);
        }
    }
}


static void
ngx_http_dato_sched_log(ngx_http_dato_sched_t *s, ngx_msec_t now)
{
    s->head = (s->head + 1) % NGX_HTTP_DATO_RATE_MAX;
    s->log[s->head] = now;

    if (s->nlog < NGX_HTTP_DATO_RATE_MAX) {
        s->nlog++;
    }
}


static ngx_uint_t
ngx_http_dato_sched_out(ngx_http_dato_sched_t *s)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < NGX_HTTP_DATO_OUT_MAX; i++) {
        if (s->out[i].ticket != NGX_HTTP_DATO_NO_TICKET) {
            n++;
        }
    }

    return n;
}


/* the calls answered within the last "window" ms */

static ngx_uint_t
ngx_http_dato_sched_count(ngx_http_dato_sched_t *s, ngx_msec_t now,
    ngx_msec_t window)
{
    ngx_uint_t  n, i;

    i = s->head;

    for (n = 0; n < s->nlog; n++) {
        if ((ngx_msec_int_t) (now - s->log[i]) >= (ngx_msec_int_t) window) {
            break;
        }

        i = (i + NGX_HTTP_DATO_RATE_MAX - 1) % NGX_HTTP_DATO_RATE_MAX;
    }

    return n;
}


/*
 * 0 when "want" more calls fit in "window" beside those out and those
 * answered in it, or how long until enough of the answered ones leave it.
 * Calls out count as made: the API may have counted them already.
 */

static ngx_msec_t
ngx_http_dato_sched_room(ngx_http_dato_sched_t *s, ngx_msec_t now,
    ngx_msec_t window, ngx_uint_t limit, ngx_uint_t want)
{
    ngx_uint_t  out, n, k, i;

    out = ngx_http_dato_sched_out(s);
    n = ngx_http_dato_sched_count(s, now, window);

    if (out + n + want <= limit) {
        return 0;
    }

    /* the k oldest answered calls in the window must leave it first */

    k = out + n + want - limit;

    if (k > n) {
        return NGX_HTTP_DATO_OUT_WAIT;
    }

    i = (s->head + NGX_HTTP_DATO_RATE_MAX - (n - k))
        % NGX_HTTP_DATO_RATE_MAX;

    return s->log[i] + window - now;
}


/*
 * The calls per API window this instance may make: the announced limit
 * less a margin of one call in 30 (other clients of the token, a window
 * that the API counts differently), less what the others that share the
 * token spent in it when the API last told; at least one, so that the
 * next answer tells again.
 */

static ngx_uint_t
ngx_http_dato_sched_budget(ngx_http_dato_sched_t *s, ngx_msec_t now)
{
    ngx_uint_t  limit;

    if (s->announced == 0) {
        return NGX_HTTP_DATO_RATE_DEFAULT;
    }

    limit = s->announced - (s->announced + 29) / 30;

    if ((ngx_msec_int_t) (now - s->others_at) < NGX_HTTP_DATO_OTHERS_TTL) {
        limit = limit > s->others ? limit - s->others : 0;
    }

    return ngx_max(limit, 1);
}


/*
 * Calls keep a steady pace of one per "gap", after a burst of a quarter
 * of the limit, or of up to 4 calls (a "generic cell rate"): the budget
 * alone would let a flood spend it all at the start of each window, and
 * a second instance reading the same Remaining would do the same at the
 * same moment.  0 when a call may leave now, or how many ms to wait.
 */

static ngx_msec_t
ngx_http_dato_sched_pace(ngx_http_dato_sched_t *s, ngx_msec_t gap,
    ngx_uint_t limit, ngx_msec_t now)
{
    ngx_msec_int_t  ahead;

    ahead = (ngx_msec_int_t) (s->due - now)
            - (ngx_msec_int_t) (gap * (ngx_http_dato_sched_burst(limit) - 1));

    return ahead > 0 ? (ngx_msec_t) ahead : 0;
}


/* a quarter of the limit, or up to 4 calls */

static ngx_uint_t
ngx_http_dato_sched_burst(ngx_uint_t limit)
{
    return ngx_max(limit / 4, ngx_min(limit, 4));
}


/*
 * X-RateLimit-Reset is seconds from now (DatoCMS); other APIs send a Unix
 * time, which is read as one.  A pause is capped: DatoCMS's window is 3 s,
 * so a longer one is a fault, and one of years would stop every worker
 * and outlive reloads.  Called locked.
 */

static ngx_msec_t
ngx_http_dato_sched_pause(ngx_http_dato_sched_t *s, ngx_int_t reset,
    ngx_uint_t *warn)
{
    ngx_int_t  secs;

    secs = reset;

    if (reset >= NGX_HTTP_DATO_EPOCH_MIN) {
        secs = reset - (ngx_int_t) ngx_time();
    }

    if (reset > NGX_HTTP_DATO_PAUSE_MAX / 1000 && !s->reset_warned) {
        s->reset_warned = 1;
        *warn = 1;
    }

    if (reset < 0 || secs <= 0) {

        /* no reset, or one passed already: a short pause */

        return 1000;
    }

    return (ngx_msec_t) ngx_min(secs, NGX_HTTP_DATO_PAUSE_MAX / 1000) * 1000;
}
