
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_dato.h"
#include "ngx_http_dato_action.h"
#include "ngx_http_dato_batch.h"
#include "ngx_http_dato_guard.h"
#include "ngx_http_dato_handler.h"
#include "ngx_http_dato_parse.h"
#include "ngx_http_dato_util.h"


/* what a 503 asks the sender to wait before it tries again, in seconds */
#define NGX_HTTP_DATO_RETRY_AFTER  "5"


typedef struct {
    ngx_http_request_t           *request;
    ngx_http_dato_waiter_t        waiter;
    ngx_uint_t                    records;
} ngx_http_dato_ctx_t;


static void ngx_http_dato_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_dato_queue_webhook(ngx_http_request_t *r,
    ngx_http_dato_parse_result_t *res);
static ngx_int_t ngx_http_dato_send_too_many(ngx_http_request_t *r, size_t n,
    ngx_uint_t queue_size);
static ngx_http_dato_ctx_t *ngx_http_dato_create_ctx(ngx_http_request_t *r,
    ngx_http_dato_loc_conf_t *dlcf, ngx_http_dato_waiter_t **w);
static ngx_int_t ngx_http_dato_read_body(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_dato_json_type(ngx_http_request_t *r);
static ngx_int_t ngx_http_dato_replay(ngx_http_request_t *r,
    ngx_http_dato_loc_conf_t *dlcf, ngx_str_t *signed_id,
    ngx_http_dato_parse_result_t *res);
static ngx_int_t ngx_http_dato_send_buf(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);
static ngx_int_t ngx_http_dato_variable_action(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static void ngx_http_dato_wake(ngx_http_dato_waiter_t *w);
static void ngx_http_dato_wait_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_dato_answer(ngx_http_request_t *r,
    ngx_http_dato_waiter_t *w, ngx_uint_t records, ngx_uint_t queued);
static ngx_int_t ngx_http_dato_refused(ngx_http_request_t *r,
    ngx_http_dato_waiter_t *w, ngx_uint_t records);
static void ngx_http_dato_log_failed(ngx_http_request_t *r,
    ngx_http_dato_waiter_t *w, ngx_uint_t records);
static ngx_int_t ngx_http_dato_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *title, const char *detail,
    ngx_str_t *code);
static ngx_int_t ngx_http_dato_send_retry(ngx_http_request_t *r,
    const char *title, const char *detail);
static ngx_int_t ngx_http_dato_send_json(ngx_http_request_t *r,
    ngx_uint_t status, json_t *root);
static ngx_int_t ngx_http_dato_add_header(ngx_http_request_t *r,
    const char *name, const char *value);
static ngx_int_t ngx_http_dato_result(ngx_http_request_t *r,
    ngx_http_dato_waiter_t *w, ngx_uint_t records);
static void ngx_http_dato_count_webhook(ngx_http_request_t *r, ngx_uint_t stat);
static ngx_int_t ngx_http_dato_variable_jobs(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_dato_variable_records(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


ngx_http_variable_t  ngx_http_dato_variables[] = {

    { ngx_string("dato_job_ids"), NULL, ngx_http_dato_variable_jobs, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dato_records"), NULL, ngx_http_dato_variable_records, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dato_action"), NULL, ngx_http_dato_variable_action, 0,
      0, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_dato_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_dato_loc_conf_t  *dlcf;

    ngx_http_dato_count_webhook(r, NGX_HTTP_DATO_WEBHOOKS_RECEIVED);

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dato_module);

    if (dlcf->secret_header.len
        && ngx_http_dato_guard_secret(r, dlcf) != NGX_OK)
    {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "dato: webhook without the right \"%V\" header",
                      &dlcf->secret_header);

        return ngx_http_dato_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                        "unauthorized",
                                        "the webhook secret is missing or "
                                        "wrong", NULL);
    }

    if (!(r->method & NGX_HTTP_POST)) {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        if (ngx_http_dato_add_header(r, "Allow", "POST") != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_dato_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                        "method not allowed",
                                        "webhooks are sent with POST", NULL);
    }

    if (ngx_http_dato_json_type(r) != NGX_OK) {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_dato_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                        "unsupported media type",
                                        "the body must be application/json",
                                        NULL);
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_dato_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        ngx_http_dato_count_webhook(r, ngx_http_dato_stat_rejected(rc));
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_dato_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_str_t                      body, signed_id;
    ngx_uint_t                     stat;
    ngx_http_dato_sign_rc_e        sign;
    ngx_http_dato_loc_conf_t      *dlcf;
    ngx_http_dato_parse_result_t   res;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dato_module);

    if (ngx_http_dato_read_body(r, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_str_null(&signed_id);

    if (dlcf->signing_keys) {
        sign = ngx_http_dato_guard_signature(r, dlcf, &body, &signed_id);

        if (sign != NGX_HTTP_DATO_SIGN_OK) {
            ngx_http_finalize_request(r,
                ngx_http_dato_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                         "unauthorized",
                                         ngx_http_dato_sign_reason(sign),
                                         NULL));
            return;
        }
    }

    ngx_http_dato_parse((char *) body.data, body.len, dlcf->events,
                        dlcf->max_records, &res);

    switch (res.status) {

    case NGX_HTTP_DATO_PARSE_PUBLISH:
        rc = ngx_http_dato_replay(r, dlcf, &signed_id, &res);

        if (rc == NGX_DECLINED) {
            rc = ngx_http_dato_queue_webhook(r, &res);
        }

        break;

    case NGX_HTTP_DATO_PARSE_IGNORED:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "dato: webhook ignored: %s", res.detail);

        stat = (res.reason == NGX_HTTP_DATO_REASON_ENTITY_TYPE)
               ? NGX_HTTP_DATO_IGNORED_ENTITY_TYPE
               : NGX_HTTP_DATO_IGNORED_EVENT_TYPE;

        ngx_http_dato_count_webhook(r, stat);

        rc = ngx_http_dato_send_json(r, NGX_HTTP_OK,
                                     json_pack("{s:{s:s, s:s}}", "meta",
                                               "status", "ignored",
                                               "reason", res.detail));
        break;

    default:
        rc = ngx_http_dato_send_error(r, res.status, res.title, res.detail,
                                      NULL);
    }

    ngx_http_dato_parse_free(&res);

    if (rc != NGX_AGAIN) {
        ngx_http_finalize_request(r, rc);
    }
}


/* NGX_AGAIN: the webhook waits for its batches, with its body reference */

static ngx_int_t
ngx_http_dato_queue_webhook(ngx_http_request_t *r,
    ngx_http_dato_parse_result_t *res)
{
    ngx_int_t                   rc;
    ngx_str_t                   env;
    ngx_http_dato_ctx_t        *ctx;
    ngx_http_dato_waiter_t     *w;
    ngx_http_dato_loc_conf_t   *dlcf;
    ngx_http_dato_main_conf_t  *dmcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dato_module);
    dmcf = ngx_http_get_module_main_conf(r, ngx_http_dato_module);

    if (res->nids > dmcf->queue_size) {
        return ngx_http_dato_send_too_many(r, res->nids, dmcf->queue_size);
    }

    if (dmcf->batcher == NULL) {

        /*
         * a configuration that no worker was started with: nginx with
         * "master_process off" does not start workers after a reload
         */

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "dato: no batcher in this process; with "
                      "\"master_process off\", restart nginx instead of "
                      "reloading it");

        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_dato_client_ready(&dlcf->target->client, r->connection->log)
        != NGX_OK)
    {
        /* nothing is queued that could not be sent: the sender retries */

        return ngx_http_dato_send_retry(r, "API host not found",
                                        "the DatoCMS API host could not be "
                                        "resolved, try again later");
    }

    if (dlcf->environment.len) {
        env = dlcf->environment;

    } else {
        env.data = (u_char *) res->environment.data;
        env.len = res->environment.len;
    }

    ctx = ngx_http_dato_create_ctx(r, dlcf, &w);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_dato_batch_add(dmcf->batcher, dlcf->target, &env,
                                 res->ids, res->nids, w, r->connection->log);

    if (rc == NGX_BUSY || rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "dato: %uz record%s refused: %s", res->nids,
                      ngx_http_dato_plural(res->nids),
                      rc == NGX_BUSY ? "dato_queue_size is reached"
                                     : "the worker process is exiting");

        return ngx_http_dato_send_retry(r, "queue full",
                                        rc == NGX_BUSY
                                        ? "the publish queue is full, "
                                          "try again later"
                                        : "the server is shutting down, "
                                          "try again later");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->records = res->nids;
    ngx_http_set_ctx(r, ctx, ngx_http_dato_module);

    ngx_http_dato_count_webhook(r, NGX_HTTP_DATO_WEBHOOKS_ACCEPTED);

    if (w == NULL || w->pending == 0) {
        return ngx_http_dato_answer(r, w, res->nids, w == NULL);
    }

    /* the webhook's write timer, as limit_req delays a request */

    ngx_add_timer(r->connection->write, dlcf->publish_timeout);

    r->write_event_handler = ngx_http_dato_wait_handler;
    r->read_event_handler = ngx_http_test_reading;

    return NGX_AGAIN;
}


/*
 * More records than a worker's queue can ever hold: a 503 would be
 * retried forever, as the queue frees and the webhook still does not fit.
 */

static ngx_int_t
ngx_http_dato_send_too_many(ngx_http_request_t *r, size_t n,
    ngx_uint_t queue_size)
{
    u_char  detail[128];

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "dato: %uz record%s refused: more than "
                  "dato_queue_size %ui", n, ngx_http_dato_plural(n),
                  queue_size);

    ngx_snprintf(detail, sizeof(detail),
                 "%uz records, more than the %ui that the publish "
                 "queue can hold%Z", n, queue_size);

    return ngx_http_dato_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                    "too many records", (char *) detail,
                                    NULL);
}


/* the webhook's context; *w its waiter, NULL with "dato_publish_wait none" */

static ngx_http_dato_ctx_t *
ngx_http_dato_create_ctx(ngx_http_request_t *r, ngx_http_dato_loc_conf_t *dlcf,
    ngx_http_dato_waiter_t **w)
{
    ngx_http_dato_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_dato_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    ctx->request = r;
    *w = NULL;

    if (dlcf->wait == NGX_HTTP_DATO_WAIT_NONE) {
        return ctx;
    }

    if (ngx_http_dato_waiter_init(&ctx->waiter, r->pool) != NGX_OK) {
        return NULL;
    }

    ctx->waiter.handler = ngx_http_dato_wake;
    ctx->waiter.data = ctx;
    ctx->waiter.result = (dlcf->wait == NGX_HTTP_DATO_WAIT_RESULT);

    *w = &ctx->waiter;

    return ctx;
}


static void
ngx_http_dato_wake(ngx_http_dato_waiter_t *w)
{
    ngx_http_dato_ctx_t *ctx = w->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    rc = ngx_http_dato_answer(r, w, ctx->records, 0);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_dato_wait_handler(ngx_http_request_t *r)
{
    ngx_event_t          *wev;
    ngx_http_dato_ctx_t  *ctx;

    wev = r->connection->write;

    if (!wev->timedout) {
        return;
    }

    wev->timedout = 0;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dato_module);

    /* dato_publish_timeout: the records stay queued, the webhook goes */

    ngx_http_dato_waiter_cancel(&ctx->waiter);

    ngx_http_finalize_request(r, ngx_http_dato_answer(r, &ctx->waiter,
                                                      ctx->records, 1));
}


/*
 * 202 {"data":[{"type":"job","id":"4235"}],"meta":{"records":1,...}}, or
 * 502 with DatoCMS's error code when a batch was refused
 */

static ngx_int_t
ngx_http_dato_answer(ngx_http_request_t *r, ngx_http_dato_waiter_t *w,
    ngx_uint_t records, ngx_uint_t queued)
{
    u_char                detail[128];
    json_t               *jobs, *job;
    ngx_buf_t            *b;
    ngx_str_t            *tail;
    ngx_uint_t            i;
    ngx_http_dato_job_t  *ids;

    static ngx_str_t  queued_tail = ngx_string(",\"status\":\"queued\"}}\n");
    static ngx_str_t  accepted_tail =
                                  ngx_string(",\"status\":\"accepted\"}}\n");

    if (w && w->fail_status && !queued) {

        if (ngx_exiting || ngx_terminate) {

            /* nothing was published: the sender is to try again */

            return ngx_http_dato_send_retry(r, "shutting down",
                                            "the server is shutting down, "
                                            "try again later");
        }

        if (w->fail_status == NGX_HTTP_DATO_NO_ANSWER) {
            ngx_snprintf(detail, sizeof(detail),
                         "DatoCMS did not answer: the records were not "
                         "published%Z");

        } else {
            ngx_snprintf(detail, sizeof(detail),
                         "DatoCMS answered %ui: the records were not "
                         "published%Z", w->fail_status);
        }

        ngx_http_dato_log_failed(r, w, records);

        if (w->refused.nelts) {
            return ngx_http_dato_refused(r, w, records);
        }

        return ngx_http_dato_send_error(r, NGX_HTTP_BAD_GATEWAY,
                                        "publish failed", (char *) detail,
                                        &w->code);
    }

    if (w && w->result && !queued) {
        return ngx_http_dato_result(r, w, records);
    }

    if (w == NULL || w->jobs.nelts == 0) {

        /* the answer of every "dato_publish_wait none" webhook: no jansson */

        b = ngx_create_temp_buf(r->pool,
                                sizeof("{\"data\":[],\"meta\":{\"records\":,"
                                       "\"status\":\"accepted\"}}\n")
                                + NGX_INT_T_LEN);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /* ngx_sprintf() only for the number: its format parsing costs */

        tail = queued ? &queued_tail : &accepted_tail;

        b->last = ngx_cpymem(b->last, "{\"data\":[],\"meta\":{\"records\":",
                             sizeof("{\"data\":[],\"meta\":{\"records\":") - 1);
        b->last = ngx_sprintf(b->last, "%ui", records);
        b->last = ngx_cpymem(b->last, tail->data, tail->len);

        return ngx_http_dato_send_buf(r, NGX_HTTP_ACCEPTED, b);
    }

    jobs = json_array();
    if (jobs == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (w) {
        ids = w->jobs.elts;

        for (i = 0; i < w->jobs.nelts; i++) {
            job = json_pack("{s:s, s:s#}", "type", "job",
                            "id", ids[i].id.data, (int) ids[i].id.len);

            if (json_array_append_new(jobs, job) != 0) {
                json_decref(jobs);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }
    }

    return ngx_http_dato_send_json(r, NGX_HTTP_ACCEPTED,
                                   json_pack("{s:o, s:{s:I, s:s}}",
                                             "data", jobs,
                                             "meta",
                                             "records", (json_int_t) records,
                                             "status",
                                             queued ? "queued" : "accepted"));
}


/*
 * dato_publish_wait result: 200 with each job's result, 502 when a job
 * failed, or 202 "queued" when some job's end is not known
 */

static ngx_int_t
ngx_http_dato_result(ngx_http_request_t *r, ngx_http_dato_waiter_t *w,
    ngx_uint_t records)
{
    json_t               *data, *job, *err;
    ngx_uint_t            i, failed, unknown;
    ngx_http_dato_job_t  *jobs;

    data = json_array();
    if (data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    jobs = w->jobs.elts;
    failed = 0;
    unknown = 0;

    for (i = 0; i < w->jobs.nelts; i++) {

        /* its records went out again in other calls, listed too */

        if (jobs[i].superseded) {
            continue;
        }

        if (jobs[i].status == 0) {
            unknown++;

        } else if (jobs[i].status < 200 || jobs[i].status > 299
                   || jobs[i].failed)
        {
            failed++;
        }

        job = json_pack("{s:s, s:s#, s:{s:I, s:I, s:I}}",
                        "type", "job_result",
                        "id", jobs[i].id.data, (int) jobs[i].id.len,
                        "attributes",
                        "status", (json_int_t) jobs[i].status,
                        "successful", (json_int_t) jobs[i].successful,
                        "failed", (json_int_t) jobs[i].failed);

        if (json_array_append_new(data, job) != 0) {
            json_decref(data);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (failed) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "dato: webhook answered 502: %ui DatoCMS job%s did "
                      "not publish every record", failed,
                      ngx_http_dato_plural(failed));

        err = json_pack("{s:s, s:s, s:s}", "status", "502",
                        "title", "publish failed",
                        "detail", "a DatoCMS job did not publish every record");

        return ngx_http_dato_send_json(r, NGX_HTTP_BAD_GATEWAY,
                                       json_pack("{s:[o], s:{s:o, s:I}}",
                                                 "errors", err,
                                                 "meta", "jobs", data,
                                                 "records",
                                                 (json_int_t) records));
    }

    return ngx_http_dato_send_json(r, unknown ? NGX_HTTP_ACCEPTED : NGX_HTTP_OK,
                                   json_pack("{s:o, s:{s:I, s:s}}",
                                             "data", data,
                                             "meta",
                                             "records", (json_int_t) records,
                                             "status",
                                             unknown ? "queued" : "published"));
}


/*
 * A webhook answered 502 says so in the log with its connection's "*N",
 * which ties it to the "gave up publishing" lines of its records.
 */

static void
ngx_http_dato_log_failed(ngx_http_request_t *r, ngx_http_dato_waiter_t *w,
    ngx_uint_t records)
{
    u_char      *p, *last, line[1024];
    ngx_str_t   *id, *code;
    ngx_uint_t   i, status;

    static ngx_str_t  none = ngx_string("-");

    code = w->code.len ? &w->code : &none;
    status = (w->fail_status == NGX_HTTP_DATO_NO_ANSWER) ? 0 : w->fail_status;

    p = line;
    last = line + sizeof(line) - sizeof(" ...");
    id = w->refused.elts;

    for (i = 0; i < w->refused.nelts; i++) {
        if (p + id[i].len + 1 > last) {
            p = ngx_cpymem(p, " ...", sizeof(" ...") - 1);
            break;
        }

        p = ngx_slprintf(p, last, "%s%V", i ? " " : "", &id[i]);
    }

    if (w->refused.nelts && w->refused.nelts < records) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "dato: webhook answered 502: %ui of its %ui record%s "
                      "not published (status %ui, code %V): %*s",
                      w->refused.nelts, records, ngx_http_dato_plural(records),
                      status, code, p - line, line);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "dato: webhook answered 502: its %ui record%s not "
                  "published (status %ui, code %V)%s%*s",
                  records, ngx_http_dato_plural(records),
                  status, code, w->refused.nelts ? ": " : "", p - line,
                  line);
}


/*
 * 502: DatoCMS refused some of the webhook's records for good; the others
 * were published, and meta.refused names the ones that were not
 */

static ngx_int_t
ngx_http_dato_refused(ngx_http_request_t *r, ngx_http_dato_waiter_t *w,
    ngx_uint_t records)
{
    u_char      detail[128];
    json_t     *ids, *err;
    ngx_str_t  *id;
    ngx_uint_t  i;

    ids = json_array();
    if (ids == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    id = w->refused.elts;

    for (i = 0; i < w->refused.nelts; i++) {
        if (json_array_append_new(ids, json_stringn((char *) id[i].data,
                                                    id[i].len))
            != 0)
        {
            json_decref(ids);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (w->fail_status == NGX_HTTP_DATO_NO_ANSWER) {
        ngx_snprintf(detail, sizeof(detail),
                     "DatoCMS did not answer: %ui of the %ui records were "
                     "not published%Z", w->refused.nelts, records);

    } else {
        ngx_snprintf(detail, sizeof(detail),
                     "DatoCMS answered %ui: %ui of the %ui records were not "
                     "published%Z", w->fail_status, w->refused.nelts, records);
    }

    err = json_pack("{s:s, s:s, s:s, s:s#}", "status", "502",
                    "title", "publish failed", "detail", detail,
                    "code", w->code.len ? (char *) w->code.data : "-",
                    (int) (w->code.len ? w->code.len : 1));

    return ngx_http_dato_send_json(r, NGX_HTTP_BAD_GATEWAY,
                                   json_pack("{s:[o], s:{s:I, s:o}}",
                                             "errors", err,
                                             "meta",
                                             "records", (json_int_t) records,
                                             "refused", ids));
}


static ngx_int_t
ngx_http_dato_send_error(ngx_http_request_t *r, ngx_uint_t status,
         const char *title, const char *detail, ngx_str_t *code)
{
    u_char   text[NGX_INT_T_LEN + 1];
    json_t  *err;

    if (status != NGX_HTTP_BAD_GATEWAY) {
        ngx_http_dato_count_webhook(r, ngx_http_dato_stat_rejected(status));
    }

    ngx_sprintf(text, "%ui%Z", status);

    err = json_pack("{s:s, s:s, s:s}", "status", text, "title", title,
                    "detail", detail);

    if (err && code && code->len) {
        json_object_set_new(err, "code",
                            json_stringn((char *) code->data, code->len));
    }

    return ngx_http_dato_send_json(r, status,
                                   err ? json_pack("{s:[o]}", "errors", err)
                                       : NULL);
}


/* 503 with Retry-After: nothing was queued, the sender is to try again */

static ngx_int_t
ngx_http_dato_send_retry(ngx_http_request_t *r, const char *title,
    const char *detail)
{
    if (ngx_http_dato_add_header(r, "Retry-After", NGX_HTTP_DATO_RETRY_AFTER)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_dato_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, title,
                                    detail, NULL);
}


/* sends the JSON document and gives up its reference */

static ngx_int_t
ngx_http_dato_send_json(ngx_http_request_t *r, ngx_uint_t status, json_t *root)
{
    ngx_buf_t  *b;

    if (status == NGX_HTTP_DATO_PARSE_INVALID) {

        /* nginx 1.22 has no reason phrase of its own for 422 */
        ngx_str_set(&r->headers_out.status_line, "422 Unprocessable Entity");
    }

    b = ngx_http_dato_json_buf(r->pool, root);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_dato_send_buf(r, status, b);
}


/* every answer to a webhook: a replay of the call will get the same */

static ngx_int_t
ngx_http_dato_send_buf(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    ngx_http_dato_guard_settle(r, status, b);

    return ngx_http_dato_output(r, status, "application/json", b);
}


/*
 * NGX_DECLINED: a new call, to be queued.  Otherwise the answer: the one
 * the call had when it was accepted before, or a 409 while that call is
 * still being answered (the sender tries again, and then gets it).
 */

static ngx_int_t
ngx_http_dato_replay(ngx_http_request_t *r, ngx_http_dato_loc_conf_t *dlcf,
    ngx_str_t *signed_id, ngx_http_dato_parse_result_t *res)
{
    ngx_int_t                     rc;
    ngx_buf_t                    *b;
    ngx_http_dato_seen_answer_t   answer;

    rc = ngx_http_dato_guard_replay(r, dlcf, signed_id, res, &answer);

    if (rc == NGX_DECLINED) {
        return NGX_DECLINED;
    }

    if (rc == NGX_BUSY) {
        if (ngx_http_dato_add_header(r, "Retry-After", "1") != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_dato_send_error(r, NGX_HTTP_CONFLICT,
                                        "call in progress",
                                        "a call with the same ID is being "
                                        "answered, try again", NULL);
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_dato_count_webhook(r, NGX_HTTP_DATO_WEBHOOKS_REPLAYED);

    if (answer.body.len == 0) {

        /* an answer too long to keep: the status, and what happened */

        return ngx_http_dato_send_json(r, answer.status,
                                       json_pack("{s:{s:s}}", "meta",
                                                 "status", "replayed"));
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = answer.body.data;
    b->last = answer.body.data + answer.body.len;
    b->memory = 1;

    return ngx_http_dato_output(r, answer.status, "application/json", b);
}


static ngx_int_t
ngx_http_dato_add_header(ngx_http_request_t *r, const char *name,
    const char *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);

    return NGX_OK;
}


/* application/json, or any application/...+json, with parameters */

static ngx_int_t
ngx_http_dato_json_type(ngx_http_request_t *r)
{
    u_char           *p, *last;
    ngx_table_elt_t  *ct;

    ct = r->headers_in.content_type;

    if (ct == NULL) {
        return NGX_DECLINED;
    }

    p = ct->value.data;
    last = p + ct->value.len;

    for (p = ct->value.data; p < last && *p != ';'; p++) { /* void */ }

    while (p > ct->value.data && (p[-1] == ' ' || p[-1] == '\t')) {
        p--;
    }

    last = p;
    p = ct->value.data;

    /* the usual spelling first: a byte compare is a tenth of a caseless one */

    if (last - p == sizeof("application/json") - 1
        && (ngx_memcmp(p, "application/json",
                       sizeof("application/json") - 1) == 0
            || ngx_strncasecmp(p, (u_char *) "application/json",
                               sizeof("application/json") - 1) == 0))
    {
        return NGX_OK;
    }

    if (last - p > (ssize_t) (sizeof("application/+json") - 1)
        && ngx_strncasecmp(p, (u_char *) "application/",
                           sizeof("application/") - 1) == 0
        && ngx_strncasecmp(last - 5, (u_char *) "+json", 5) == 0)
    {
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/*
 * The body in one piece.  A body past client_body_buffer_size is in
 * nginx's temporary file, just written, so it is read from the page cache.
 */

static ngx_int_t
ngx_http_dato_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    off_t         len;
    u_char       *p;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    /*
     * nginx may end the chain with an empty buffer, in memory or not:
     * such buffers are skipped, and a body in one buffer is not copied
     */

    len = 0;
    b = NULL;
    n = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (ngx_buf_size(cl->buf) == 0) {
            continue;
        }

        len += ngx_buf_size(cl->buf);
        b = cl->buf;
        n++;
    }

    if (n == 0) {
        return NGX_OK;
    }

    if (n == 1 && ngx_buf_in_memory(b)) {
        body->data = b->pos;
        body->len = b->last - b->pos;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_size(b) == 0) {
            continue;
        }

        if (ngx_buf_in_memory(b)) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                          b->file_pos);

        if (n != b->file_last - b->file_pos) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "dato: cannot read the body from \"%V\"",
                          &b->file->name);
            return NGX_ERROR;
        }

        p += n;
    }

    body->len = p - body->data;

    return NGX_OK;
}


static void
ngx_http_dato_count_webhook(ngx_http_request_t *r, ngx_uint_t stat)
{
    ngx_http_dato_main_conf_t  *dmcf;

    dmcf = ngx_http_get_module_main_conf(r, ngx_http_dato_module);

    ngx_http_dato_stat_add(dmcf->zone, stat, 1);
}


static ngx_int_t
ngx_http_dato_variable_jobs(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char               *p;
    size_t                len;
    ngx_uint_t            i;
    ngx_http_dato_ctx_t  *ctx;
    ngx_http_dato_job_t  *jobs;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dato_module);

    if (ctx == NULL || ctx->waiter.jobs.nelts == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    jobs = ctx->waiter.jobs.elts;
    len = 0;

    for (i = 0; i < ctx->waiter.jobs.nelts; i++) {
        len += jobs[i].id.len + 1;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;

    for (i = 0; i < ctx->waiter.jobs.nelts; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, jobs[i].id.data, jobs[i].id.len);
    }

    v->len = p - v->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_dato_variable_records(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char               *p;
    ngx_http_dato_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dato_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;
    v->len = ngx_sprintf(p, "%ui", ctx->records) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_dato_variable_action(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_dato_loc_conf_t  *dlcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dato_module);

    if (!dlcf->publish) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = ngx_http_dato_actions[dlcf->action].name.data;
    v->len = ngx_http_dato_actions[dlcf->action].name.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}
