
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The DatoCMS client: builds Content Management API calls and reads their
 * answers.  It knows the API and the curl bridge, never a webhook request.
 */


#ifndef _NGX_HTTP_DATO_CLIENT_H_INCLUDED_
#define _NGX_HTTP_DATO_CLIENT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_action.h"
#include "ngx_http_dato_curl.h"
#include "ngx_http_dato_parse.h"


#define NGX_HTTP_DATO_CODE_LEN     64
#define NGX_HTTP_DATO_JOB_LEN      32
#define NGX_HTTP_DATO_DETAILS_LEN  256


/* a record ID, NUL-terminated so that jansson can take it as it is */
typedef struct {
    u_char                      data[NGX_HTTP_DATO_ID_MAX_LEN + 1];
    u_char                      len;
} ngx_http_dato_id_t;


typedef struct {
    ngx_str_t                   base_url;        /* no trailing slash */

    /* the bulk action's, set before ngx_http_dato_client_conf_init() */
    ngx_http_dato_action_t     *action;
    ngx_str_t                   stage;

    ngx_str_t                   bulk_url;        /* NUL-terminated */
    ngx_str_t                   authorization;   /* NUL-terminated */
    ngx_str_t                   ca_file;         /* NUL-terminated or empty */
    ngx_msec_t                  timeout;

    /*
     * The API host: with a "resolver", resolved before each call (host);
     * without, resolved once when the configuration is read (resolve, a
     * CURLOPT_RESOLVE entry, NUL-terminated), or not found then
     * (unresolved).  An IP literal needs neither.
     */
    ngx_http_dato_curl_host_t   host;
    ngx_str_t                   resolve;
    unsigned                    unresolved:1;

    /* per worker: when a refusal for want of the host was last logged */
    time_t                      unresolved_logged;
} ngx_http_dato_client_conf_t;


/* what became of a call, beside the HTTP status of its answer */
typedef enum {
    NGX_HTTP_DATO_CLIENT_ANSWERED = 0,
    NGX_HTTP_DATO_CLIENT_FAILED,          /* no answer; see code */
    NGX_HTTP_DATO_CLIENT_ABORTED          /* the worker process is exiting */
} ngx_http_dato_client_outcome_e;


typedef struct {
    /* the HTTP status of the answer, 0 when there was none */
    ngx_uint_t                  status;
    ngx_http_dato_client_outcome_e  outcome;

    /* the error carried "transient": true, or was not DatoCMS's JSON */
    unsigned                    transient:1;

    /*
     * X-RateLimit-Limit, -Remaining and -Reset as they came, -1 when
     * absent or not a number; the scheduler judges them
     */
    ngx_int_t                   rate_limit;
    ngx_int_t                   rate_remaining;
    ngx_int_t                   rate_reset;

    /* empty when the answer had none; refused when not an ID (bad_job) */
    ngx_str_t                   job_id;
    unsigned                    bad_job:1;

    /* a finished job: its attributes.status and payload.meta counts */
    ngx_uint_t                  job_status;
    ngx_uint_t                  successful;
    ngx_uint_t                  failed;

    /* DatoCMS's error code, or curl's reason for a network failure */
    ngx_str_t                   code;

    /*
     * the error's details as compact JSON, or the host a redirect named:
     * printable ASCII, cut to NGX_HTTP_DATO_DETAILS_LEN
     */
    ngx_str_t                   details;

    u_char                      job_buf[NGX_HTTP_DATO_JOB_LEN];
    u_char                      code_buf[NGX_HTTP_DATO_CODE_LEN];
    u_char                      details_buf[NGX_HTTP_DATO_DETAILS_LEN];
} ngx_http_dato_client_result_t;


typedef void (*ngx_http_dato_client_done_pt)(void *data,
    ngx_http_dato_client_result_t *res);


char *ngx_http_dato_client_conf_init(ngx_conf_t *cf,
    ngx_http_dato_client_conf_t *cc, ngx_str_t *api_url, ngx_str_t *token,
    ngx_resolver_t *resolver, ngx_msec_t resolver_timeout);
ngx_int_t ngx_http_dato_client_ready(ngx_http_dato_client_conf_t *cc,
    ngx_log_t *log);
ngx_int_t ngx_http_dato_client_bulk(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_client_conf_t *cc, ngx_str_t *env, ngx_http_dato_id_t *ids,
    ngx_uint_t n, ngx_http_dato_client_done_pt done, void *data,
    ngx_log_t *log);
ngx_int_t ngx_http_dato_client_job(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_client_conf_t *cc, ngx_str_t *env, ngx_str_t *job,
    ngx_http_dato_client_done_pt done, void *data, ngx_log_t *log);


#endif /* _NGX_HTTP_DATO_CLIENT_H_INCLUDED_ */
