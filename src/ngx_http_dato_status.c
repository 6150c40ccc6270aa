
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_dato.h"
#include "ngx_http_dato_shm.h"
#include "ngx_http_dato_status.h"
#include "ngx_http_dato_util.h"


/* a metric's Prometheus type, an index of ngx_http_dato_metric_types */
#define NGX_HTTP_DATO_METRIC_COUNTER  0
#define NGX_HTTP_DATO_METRIC_GAUGE    1


/* one line of the page: a Prometheus sample and a place in the JSON */
typedef struct {
    const char                   *name;
    ngx_uint_t                    type;
    const char                   *help;
    const char                   *labels;
    const char                   *path;
    ngx_uint_t                    stat;
} ngx_http_dato_metric_t;


static ngx_uint_t ngx_http_dato_status_capacity(ngx_http_request_t *r);
static ngx_buf_t *ngx_http_dato_status_json(ngx_http_request_t *r,
    ngx_http_dato_snapshot_t *snap);
static ngx_buf_t *ngx_http_dato_status_prometheus(ngx_http_request_t *r,
    ngx_http_dato_snapshot_t *snap);
static void ngx_http_dato_status_set(json_t *root, const char *path,
    json_t *value);
static json_t *ngx_http_dato_status_histogram(ngx_http_dato_histogram_t *h);
static u_char *ngx_http_dato_status_seconds(u_char *p, u_char *last,
    ngx_msec_t ms);


#define ngx_http_dato_counter(name, help, labels, path, stat)                 \
    { name, NGX_HTTP_DATO_METRIC_COUNTER, help, labels, path, stat }

#define ngx_http_dato_gauge(name, help, labels, path, stat)                   \
    { name, NGX_HTTP_DATO_METRIC_GAUGE, help, labels, path, stat }


static const char  *ngx_http_dato_metric_types[] = { "counter", "gauge" };


static ngx_http_dato_metric_t  ngx_http_dato_metrics[] = {

    ngx_http_dato_counter("dato_webhooks_received_total",
        "Requests to dato_publish locations.", NULL,
        "webhooks.received", NGX_HTTP_DATO_WEBHOOKS_RECEIVED),

    ngx_http_dato_counter("dato_webhooks_accepted_total",
        "Webhooks whose records were queued.", NULL,
        "webhooks.accepted", NGX_HTTP_DATO_WEBHOOKS_ACCEPTED),

    ngx_http_dato_counter("dato_webhooks_replayed_total",
        "Calls accepted before (a webhook-id or webhook_call_id seen), "
        "answered as then.", NULL,
        "webhooks.replayed", NGX_HTTP_DATO_WEBHOOKS_REPLAYED),

    ngx_http_dato_counter("dato_webhooks_ignored_total",
        "Webhooks answered 200 without a publish, by reason.",
        "reason=\"entity_type\"",
        "webhooks.ignored.entity_type", NGX_HTTP_DATO_IGNORED_ENTITY_TYPE),
    ngx_http_dato_counter("dato_webhooks_ignored_total", NULL,
        "reason=\"event_type\"",
        "webhooks.ignored.event_type", NGX_HTTP_DATO_IGNORED_EVENT_TYPE),

    ngx_http_dato_counter("dato_webhooks_rejected_total",
        "Webhooks refused before any record was queued, by status.",
        "status=\"400\"", "webhooks.rejected.400",
        NGX_HTTP_DATO_REJECTED_400),
    ngx_http_dato_counter("dato_webhooks_rejected_total", NULL,
        "status=\"401\"", "webhooks.rejected.401",
        NGX_HTTP_DATO_REJECTED_401),
    ngx_http_dato_counter("dato_webhooks_rejected_total", NULL,
        "status=\"405\"", "webhooks.rejected.405",
        NGX_HTTP_DATO_REJECTED_405),
    ngx_http_dato_counter("dato_webhooks_rejected_total", NULL,
        "status=\"409\"", "webhooks.rejected.409",
        NGX_HTTP_DATO_REJECTED_409),
    ngx_http_dato_counter("dato_webhooks_rejected_total", NULL,
        "status=\"413\"", "webhooks.rejected.413",
        NGX_HTTP_DATO_REJECTED_413),
    ngx_http_dato_counter("dato_webhooks_rejected_total", NULL,
        "status=\"415\"", "webhooks.rejected.415",
        NGX_HTTP_DATO_REJECTED_415),
    ngx_http_dato_counter("dato_webhooks_rejected_total", NULL,
        "status=\"422\"", "webhooks.rejected.422",
        NGX_HTTP_DATO_REJECTED_422),
    ngx_http_dato_counter("dato_webhooks_rejected_total", NULL,
        "status=\"500\"", "webhooks.rejected.500",
        NGX_HTTP_DATO_REJECTED_500),
    ngx_http_dato_counter("dato_webhooks_rejected_total", NULL,
        "status=\"503\"", "webhooks.rejected.503",
        NGX_HTTP_DATO_REJECTED_503),

    ngx_http_dato_gauge("dato_records_queued",
        "Records queued or in flight now, all workers.", NULL,
        "records.queued", NGX_HTTP_DATO_RECORDS_QUEUED),
    ngx_http_dato_counter("dato_records_sent_total",
        "Records in bulk publish calls that DatoCMS accepted.", NULL,
        "records.sent", NGX_HTTP_DATO_RECORDS_SENT),
    ngx_http_dato_counter("dato_records_published_total",
        "Records that finished jobs published.", NULL,
        "records.published", NGX_HTTP_DATO_RECORDS_PUBLISHED),
    ngx_http_dato_counter("dato_records_failed_total",
        "Records that finished jobs did not publish.", NULL,
        "records.failed", NGX_HTTP_DATO_RECORDS_FAILED),
    ngx_http_dato_counter("dato_records_given_up_total",
        "Records given up and logged with their IDs.", NULL,
        "records.given_up", NGX_HTTP_DATO_RECORDS_GIVEN_UP),

#define ngx_http_dato_calls(call, base, help)                                 \
    ngx_http_dato_counter("dato_api_calls_total", help,                       \
        "call=\"" call "\",outcome=\"success\"",                              \
        "api_calls." call ".success", base + NGX_HTTP_DATO_CALL_SUCCESS),     \
    ngx_http_dato_counter("dato_api_calls_total", NULL,                       \
        "call=\"" call "\",outcome=\"rate_limited\"",                         \
        "api_calls." call ".rate_limited",                                    \
        base + NGX_HTTP_DATO_CALL_RATE_LIMITED),                              \
    ngx_http_dato_counter("dato_api_calls_total", NULL,                       \
        "call=\"" call "\",outcome=\"client_error\"",                         \
        "api_calls." call ".client_error",                                    \
        base + NGX_HTTP_DATO_CALL_CLIENT_ERROR),                              \
    ngx_http_dato_counter("dato_api_calls_total", NULL,                       \
        "call=\"" call "\",outcome=\"server_error\"",                         \
        "api_calls." call ".server_error",                                    \
        base + NGX_HTTP_DATO_CALL_SERVER_ERROR),                              \
    ngx_http_dato_counter("dato_api_calls_total", NULL,                       \
        "call=\"" call "\",outcome=\"network\"",                              \
        "api_calls." call ".network", base + NGX_HTTP_DATO_CALL_NETWORK)

    ngx_http_dato_calls("publish", NGX_HTTP_DATO_CALLS_PUBLISH,
        "Calls to the DatoCMS API, by call and outcome (a job poll "
        "answered 404, still running, is a success)."),
    ngx_http_dato_calls("unpublish", NGX_HTTP_DATO_CALLS_UNPUBLISH, NULL),
    ngx_http_dato_calls("move_to_stage", NGX_HTTP_DATO_CALLS_MOVE_TO_STAGE,
                        NULL),
    ngx_http_dato_calls("job_result", NGX_HTTP_DATO_CALLS_JOB, NULL),

    /* the record counters again, by action: a family's samples together */

#define ngx_http_dato_action_queued(action, i, help)                          \
    ngx_http_dato_gauge("dato_action_records_queued", help,                   \
        "action=\"" action "\"", "actions." action ".records.queued",         \
        ngx_http_dato_action_stat(i, NGX_HTTP_DATO_RECORDS_QUEUED))

    ngx_http_dato_action_queued("publish", NGX_HTTP_DATO_PUBLISH,
        "Records queued or in flight now, by action."),
    ngx_http_dato_action_queued("unpublish", NGX_HTTP_DATO_UNPUBLISH, NULL),
    ngx_http_dato_action_queued("move-to-stage", NGX_HTTP_DATO_MOVE_TO_STAGE,
                                NULL),

#define ngx_http_dato_action_state(action, i, state, stat, help)              \
    ngx_http_dato_counter("dato_action_records_total", help,                  \
        "action=\"" action "\",state=\"" state "\"",                          \
        "actions." action ".records." state,                                  \
        ngx_http_dato_action_stat(i, stat))

#define ngx_http_dato_action_records(action, i, help)                         \
    ngx_http_dato_action_state(action, i, "sent",                             \
                               NGX_HTTP_DATO_RECORDS_SENT, help),             \
    ngx_http_dato_action_state(action, i, "done",                             \
                               NGX_HTTP_DATO_RECORDS_PUBLISHED, NULL),        \
    ngx_http_dato_action_state(action, i, "failed",                           \
                               NGX_HTTP_DATO_RECORDS_FAILED, NULL),           \
    ngx_http_dato_action_state(action, i, "given_up",                         \
                               NGX_HTTP_DATO_RECORDS_GIVEN_UP, NULL)

    ngx_http_dato_action_records("publish", NGX_HTTP_DATO_PUBLISH,
        "Records by action: sent (DatoCMS accepted the call), done and "
        "failed (as the job told), given up (logged with their IDs)."),
    ngx_http_dato_action_records("unpublish", NGX_HTTP_DATO_UNPUBLISH, NULL),
    ngx_http_dato_action_records("move-to-stage",
                                 NGX_HTTP_DATO_MOVE_TO_STAGE, NULL),

    ngx_http_dato_counter("dato_api_retries_total",
        "Bulk publish calls made again after a failure.", NULL,
        "api_calls.retries", NGX_HTTP_DATO_RETRIES),

    ngx_http_dato_gauge("dato_jobs_pending",
        "Jobs followed now, all workers.", NULL,
        "jobs.pending", NGX_HTTP_DATO_JOBS_PENDING),
    ngx_http_dato_counter("dato_jobs_done_total",
        "Jobs that finished and published every record.", NULL,
        "jobs.done", NGX_HTTP_DATO_JOBS_DONE),
    ngx_http_dato_counter("dato_jobs_failed_total",
        "Jobs that finished with an error or failed records.", NULL,
        "jobs.failed", NGX_HTTP_DATO_JOBS_FAILED),
    ngx_http_dato_counter("dato_jobs_unfinished_total",
        "Jobs that did not finish within dato_job_timeout.", NULL,
        "jobs.unfinished", NGX_HTTP_DATO_JOBS_UNFINISHED),

    { NULL, 0, NULL, NULL, NULL, 0 }
};


static const char  *ngx_http_dato_histograms[][3] = {
    { "dato_job_id_latency_seconds",
      "From a batch's first record to the job ID of its bulk call.",
      "latency.job_id" },
    { "dato_job_done_latency_seconds",
      "From a batch's first record to the end of its job.",
      "latency.job_done" }
};


ngx_int_t
ngx_http_dato_status_handler(ngx_http_request_t *r)
{
    char                       *type;
    ngx_int_t                   rc;
    ngx_str_t                   format;
    ngx_buf_t                  *b;
    ngx_http_dato_snapshot_t   *snap;
    ngx_http_dato_main_conf_t  *dmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    dmcf = ngx_http_get_module_main_conf(r, ngx_http_dato_module);

    snap = ngx_palloc(r->pool, sizeof(ngx_http_dato_snapshot_t));
    if (snap == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_dato_shm_snapshot(dmcf->zone, snap);

    if (ngx_http_arg(r, (u_char *) "format", 6, &format) == NGX_OK
        && format.len == 10
        && ngx_strncmp(format.data, "prometheus", 10) == 0)
    {
        b = ngx_http_dato_status_prometheus(r, snap);
        type = "text/plain; version=0.0.4; charset=utf-8";

    } else {
        b = ngx_http_dato_status_json(r, snap);
        type = "application/json";
    }

    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_dato_output(r, NGX_HTTP_OK, type, b);
}


/*
 * The most records that the workers hold at once, dato_queue_size each,
 * so that an alert can tell a queue that fills: records.queued is the sum
 * of all workers' queues.  One worker may fill before the others.
 */

static ngx_uint_t
ngx_http_dato_status_capacity(ngx_http_request_t *r)
{
    ngx_core_conf_t            *ccf;
    ngx_http_dato_main_conf_t  *dmcf;

    dmcf = ngx_http_get_module_main_conf(r, ngx_http_dato_module);
    ccf = (ngx_core_conf_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                           ngx_core_module);

    if (ccf->master && ccf->worker_processes > 1) {
        return dmcf->queue_size * ccf->worker_processes;
    }

    return dmcf->queue_size;
}


static ngx_buf_t *
ngx_http_dato_status_json(ngx_http_request_t *r,
    ngx_http_dato_snapshot_t *snap)
{
    json_t                    *root, *jobs, *job, *v;
    time_t                     now;
    ngx_uint_t                 i;
    ngx_atomic_uint_t          n;
    ngx_http_dato_metric_t    *m;
    ngx_http_dato_last_job_t  *lj;

    root = json_pack("{s:s}", "version", NGX_HTTP_DATO_VERSION);
    if (root == NULL) {
        return NULL;
    }

    for (m = ngx_http_dato_metrics; m->name; m++) {
        n = snap->stats[m->stat];

        v = (m->type == NGX_HTTP_DATO_METRIC_GAUGE)
            ? json_integer((json_int_t) (ngx_atomic_int_t) n)
            : json_integer((json_int_t) n);

        ngx_http_dato_status_set(root, m->path, v);
    }

    ngx_http_dato_status_set(root, "records.capacity",
                  json_integer((json_int_t) ngx_http_dato_status_capacity(r)));

    ngx_http_dato_status_set(root, "rate_limit.pause_ms",
                             json_integer((json_int_t) snap->rate.pause));
    ngx_http_dato_status_set(root, "rate_limit.limit",
                             json_integer((json_int_t) snap->rate.limit));
    ngx_http_dato_status_set(root, "rate_limit.announced",
                             json_integer((json_int_t) snap->rate.announced));
    ngx_http_dato_status_set(root, "rate_limit.remaining",
                             json_integer((json_int_t) snap->rate.remaining));

    for (i = 0; i < 2; i++) {
        ngx_http_dato_status_set(root, ngx_http_dato_histograms[i][2],
                      ngx_http_dato_status_histogram(&snap->latency[i]));
    }

    now = ngx_time();

    jobs = json_array();

    for (i = 0; jobs && i < snap->njobs; i++) {
        lj = &snap->jobs[i];

        job = json_pack("{s:s#, s:I, s:I, s:I, s:I, s:I}",
                        "id", lj->id, (int) lj->id_len,
                        "records", (json_int_t) lj->records,
                        "status", (json_int_t) lj->status,
                        "successful", (json_int_t) lj->successful,
                        "failed", (json_int_t) lj->failed,
                        "age_seconds", (json_int_t) (now - lj->sent));

        if (job && lj->done) {
            json_object_set_new(job, "seconds",
                                json_integer(lj->done - lj->sent));
        }

        json_array_append_new(jobs, job);
    }

    ngx_http_dato_status_set(root, "last_jobs", jobs);

    if (snap->error_time) {
        ngx_http_dato_status_set(root, "last_api_error",
            json_pack("{s:I, s:s#, s:I}",
                      "status", (json_int_t) snap->error_status,
                      "code", snap->error_code, (int) snap->error_code_len,
                      "age_seconds", (json_int_t) (now - snap->error_time)));

    } else {
        ngx_http_dato_status_set(root, "last_api_error", json_null());
    }

    return ngx_http_dato_json_buf(r->pool, root);
}


/* sets root.a.b.c = value, making the objects on the way */

static void
ngx_http_dato_status_set(json_t *root, const char *path, json_t *value)
{
    char         key[64];
    json_t      *o, *next;
    const char  *dot;

    if (value == NULL) {
        return;
    }

    o = root;

    while ((dot = strchr(path, '.')) != NULL) {
        ngx_cpystrn((u_char *) key, (u_char *) path,
                    ngx_min((size_t) (dot - path) + 1, sizeof(key)));

        next = json_object_get(o, key);

        if (next == NULL) {
            next = json_object();
            json_object_set_new(o, key, next);
        }

        o = next;
        path = dot + 1;
    }

    json_object_set_new(o, path, value);
}


static json_t *
ngx_http_dato_status_histogram(ngx_http_dato_histogram_t *h)
{
    u_char      le[32];
    json_t     *o, *buckets;
    ngx_uint_t  i, n;

    o = json_pack("{s:I, s:I}", "count", (json_int_t) h->count,
                  "sum_ms", (json_int_t) h->sum_ms);

    buckets = json_object();

    if (o == NULL || buckets == NULL) {
        json_decref(o);
        json_decref(buckets);
        return NULL;
    }

    n = 0;

    for (i = 0; i < NGX_HTTP_DATO_LATENCY_BUCKETS; i++) {
        n += h->buckets[i];

        *ngx_http_dato_status_seconds(le, le + sizeof(le) - 1,
                                      ngx_http_dato_latency_bounds[i]) = '\0';

        json_object_set_new(buckets, (char *) le, json_integer(n));
    }

    json_object_set_new(o, "le", buckets);

    return o;
}


static ngx_buf_t *
ngx_http_dato_status_prometheus(ngx_http_request_t *r,
    ngx_http_dato_snapshot_t *snap)
{
    u_char                     *p, *last;
    ngx_buf_t                  *b;
    ngx_uint_t                  i, j, n;
    const char                 *prev;
    ngx_http_dato_metric_t     *m;
    ngx_http_dato_histogram_t  *h;

    b = ngx_create_temp_buf(r->pool, 16384);
    if (b == NULL) {
        return NULL;
    }

    p = b->pos;
    last = b->end;

    p = ngx_slprintf(p, last,
                     "# HELP dato_info The module's version.\n"
                     "# TYPE dato_info gauge\n"
                     "dato_info{version=\"%s\"} 1\n",
                     NGX_HTTP_DATO_VERSION);

    prev = NULL;

    for (m = ngx_http_dato_metrics; m->name; m++) {

        if (prev == NULL || ngx_strcmp(prev, m->name) != 0) {
            p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                             m->name, m->help ? m->help : "", m->name,
                             ngx_http_dato_metric_types[m->type]);
            prev = m->name;
        }

        p = ngx_slprintf(p, last, "%s%s%s%s ", m->name,
                         m->labels ? "{" : "", m->labels ? m->labels : "",
                         m->labels ? "}" : "");

        if (m->type == NGX_HTTP_DATO_METRIC_GAUGE) {
            p = ngx_slprintf(p, last, "%i\n",
                             (ngx_int_t) (ngx_atomic_int_t)
                             snap->stats[m->stat]);

        } else {
            p = ngx_slprintf(p, last, "%uA\n", snap->stats[m->stat]);
        }
    }

    p = ngx_slprintf(p, last,
                     "# HELP dato_records_queue_capacity Records the "
                     "workers hold at most: dato_queue_size times the "
                     "worker processes.\n"
                     "# TYPE dato_records_queue_capacity gauge\n"
                     "dato_records_queue_capacity %ui\n",
                     ngx_http_dato_status_capacity(r));

    p = ngx_slprintf(p, last,
                     "# HELP dato_rate_limit_pause_seconds Time left in "
                     "the pause that a 429 set.\n"
                     "# TYPE dato_rate_limit_pause_seconds gauge\n"
                     "dato_rate_limit_pause_seconds ");
    p = ngx_http_dato_status_seconds(p, last, snap->rate.pause);

    p = ngx_slprintf(p, last,
                     "\n# HELP dato_rate_limit_calls Calls per 3 s window "
                     "the module plans with now.\n"
                     "# TYPE dato_rate_limit_calls gauge\n"
                     "dato_rate_limit_calls %ui\n"
                     "# HELP dato_rate_limit_announced_calls The last "
                     "X-RateLimit-Limit of the API.\n"
                     "# TYPE dato_rate_limit_announced_calls gauge\n"
                     "dato_rate_limit_announced_calls %ui\n"
                     "# HELP dato_rate_limit_remaining_calls The last "
                     "X-RateLimit-Remaining of the API.\n"
                     "# TYPE dato_rate_limit_remaining_calls gauge\n"
                     "dato_rate_limit_remaining_calls %ui\n",
                     snap->rate.limit, snap->rate.announced,
                     snap->rate.remaining);

    for (i = 0; i < 2; i++) {
        h = &snap->latency[i];

        p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s histogram\n",
                         ngx_http_dato_histograms[i][0],
                         ngx_http_dato_histograms[i][1],
                         ngx_http_dato_histograms[i][0]);

        n = 0;

        for (j = 0; j < NGX_HTTP_DATO_LATENCY_BUCKETS; j++) {
            n += h->buckets[j];

            p = ngx_slprintf(p, last, "%s_bucket{le=\"",
                             ngx_http_dato_histograms[i][0]);
            p = ngx_http_dato_status_seconds(p, last,
                                             ngx_http_dato_latency_bounds[j]);
            p = ngx_slprintf(p, last, "\"} %ui\n", n);
        }

        p = ngx_slprintf(p, last, "%s_bucket{le=\"+Inf\"} %uA\n%s_sum ",
                         ngx_http_dato_histograms[i][0], h->count,
                         ngx_http_dato_histograms[i][0]);
        p = ngx_http_dato_status_seconds(p, last, h->sum_ms);
        p = ngx_slprintf(p, last, "\n%s_count %uA\n",
                         ngx_http_dato_histograms[i][0], h->count);
    }

    b->last = p;

    return b;
}


/* ms as seconds with 3 decimals, as Prometheus wants base units */

static u_char *
ngx_http_dato_status_seconds(u_char *p, u_char *last, ngx_msec_t ms)
{
    return ngx_slprintf(p, last, "%M.%03M", ms / 1000, ms % 1000);
}
