
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * ngx_http_dato_module: a location with "dato_publish" receives DatoCMS
 * (or any editorial) webhooks and publishes the records they name through
 * DatoCMS's bulk publish endpoint, in batches.  This file only wires the
 * directives to the parts in src/.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_dato.h"
#include "ngx_http_dato_action.h"
#include "ngx_http_dato_batch.h"
#include "ngx_http_dato_handler.h"
#include "ngx_http_dato_sign.h"
#include "ngx_http_dato_status.h"
#include "ngx_http_dato_valid.h"


/* the calls per 3 s that DatoCMS allows a token */
#define NGX_HTTP_DATO_DATOCMS_LIMIT  60


/*
 * a time: why 0 is refused (NULL: 0 is accepted), and the most it may be
 * before a warning says why it is too long (0: no warning)
 */
typedef struct {
    ngx_conf_post_handler_pt      post_handler;
    const char                   *zero;
    ngx_msec_t                    warn;
    const char                   *too_long;
} ngx_http_dato_msec_bounds_t;


static ngx_int_t ngx_http_dato_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_dato_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_dato_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_dato_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_dato_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_dato_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static void ngx_http_dato_merge_values(ngx_http_dato_loc_conf_t *conf,
    ngx_http_dato_loc_conf_t *prev);
static ngx_int_t ngx_http_dato_check_publish(ngx_conf_t *cf,
    ngx_http_dato_loc_conf_t *conf);
static char *ngx_http_dato_add_target(ngx_conf_t *cf,
    ngx_http_dato_loc_conf_t *conf);
static ngx_int_t ngx_http_dato_target_rate(ngx_http_dato_main_conf_t *dmcf,
    ngx_http_dato_loc_conf_t *conf, ngx_http_dato_target_t *target);
static char *ngx_http_dato_publish(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_publish_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_api_url(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_api_token(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_token_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_dato_read_secret(ngx_conf_t *cf, ngx_str_t *path,
    ngx_str_t *secret);
static char *ngx_http_dato_signing_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_webhook_secret_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_dato_set_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_dato_loc_conf_t *dlcf, ngx_str_t *name, ngx_str_t *secret);
static ngx_int_t ngx_http_dato_check_events(ngx_conf_t *cf,
    ngx_http_dato_loc_conf_t *conf);
static ngx_int_t ngx_http_dato_check_token(ngx_conf_t *cf, ngx_str_t *name,
    ngx_str_t *token, ngx_str_t *file);
static char *ngx_http_dato_ca_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_environment(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_publish_events(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_publish_wait(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_rate_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_webhook_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void ngx_http_dato_check_secret_header(ngx_conf_t *cf,
    ngx_http_dato_loc_conf_t *conf);
static char *ngx_http_dato_check_num(ngx_conf_t *cf, void *post, void *data);
static char *ngx_http_dato_check_msec(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_dato_check_zone_size(ngx_conf_t *cf, void *post,
    void *data);
static void ngx_cdecl ngx_http_dato_conf_log_at(ngx_uint_t level,
    ngx_conf_t *cf, ngx_http_dato_conf_at_t *at, const char *fmt, ...);
static ngx_int_t ngx_http_dato_init_process(ngx_cycle_t *cycle);
static void ngx_http_dato_exit_process(ngx_cycle_t *cycle);


/*
 * nginx's own bounds check does not name its directive: these do, with
 * the value, at the directive's line
 */

static ngx_conf_num_bounds_t  ngx_http_dato_batch_size_bounds = {
    ngx_http_dato_check_num, 1, NGX_HTTP_DATO_BATCH_MAX
};

static ngx_conf_num_bounds_t  ngx_http_dato_queue_size_bounds = {
    ngx_http_dato_check_num, 1, -1
};

static ngx_conf_post_t  ngx_http_dato_zone_size_post = {
    ngx_http_dato_check_zone_size
};


static ngx_http_dato_msec_bounds_t  ngx_http_dato_api_timeout_bounds = {
    ngx_http_dato_check_msec, "a call would have no time limit", 0, NULL
};

static ngx_http_dato_msec_bounds_t  ngx_http_dato_retry_timeout_bounds = {
    ngx_http_dato_check_msec,
    "every record would be given up before its first call", 0, NULL
};

static ngx_http_dato_msec_bounds_t  ngx_http_dato_job_timeout_bounds = {
    ngx_http_dato_check_msec,
    "to follow no job, use \"dato_job_poll off\"", 0, NULL
};

/* DatoCMS waits 8 s for a webhook's answer, then counts the call failed */

static ngx_http_dato_msec_bounds_t  ngx_http_dato_publish_timeout_bounds = {
    ngx_http_dato_check_msec, NULL, 8000,
    "is longer than DatoCMS waits for a webhook call (8s): it drops the "
    "call and counts it as failed"
};


static ngx_conf_enum_t  ngx_http_dato_wait[] = {
    { ngx_string("none"), NGX_HTTP_DATO_WAIT_NONE },
    { ngx_string("job"), NGX_HTTP_DATO_WAIT_JOB },
    { ngx_string("result"), NGX_HTTP_DATO_WAIT_RESULT },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_dato_commands[] = {

    { ngx_string("dato_publish"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_dato_publish,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_unpublish"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_dato_publish,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      &ngx_http_dato_actions[NGX_HTTP_DATO_UNPUBLISH] },

    { ngx_string("dato_move_to_stage"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_publish,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      &ngx_http_dato_actions[NGX_HTTP_DATO_MOVE_TO_STAGE] },

    { ngx_string("dato_publish_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_dato_publish_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_job_poll"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, job_poll),
      NULL },

    { ngx_string("dato_job_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, job_timeout),
      &ngx_http_dato_job_timeout_bounds },

    { ngx_string("dato_api_ca_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_ca_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_max_records"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, max_records),
      NULL },

    { ngx_string("dato_webhook_secret"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_dato_webhook_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_webhook_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_dato_webhook_secret_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_webhook_signing_secret"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_signing_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_webhook_signing_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_signing_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) 1 },

    { ngx_string("dato_api_token"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_api_token,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_api_token_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_token_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_api_url"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_api_url,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_api_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, api_timeout),
      &ngx_http_dato_api_timeout_bounds },

    { ngx_string("dato_retry_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, retry_timeout),
      &ngx_http_dato_retry_timeout_bounds },

    { ngx_string("dato_rate_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_dato_rate_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_environment"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_environment,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_batch_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, batch_size),
      &ngx_http_dato_batch_size_bounds },

    { ngx_string("dato_batch_window"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, batch_window),
      NULL },

    { ngx_string("dato_publish_events"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_dato_publish_events,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_publish_wait"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_publish_wait,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_publish_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, publish_timeout),
      &ngx_http_dato_publish_timeout_bounds },

    { ngx_string("dato_queue_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dato_main_conf_t, queue_size),
      &ngx_http_dato_queue_size_bounds },

    { ngx_string("dato_spool_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dato_main_conf_t, spool),
      NULL },

    { ngx_string("dato_zone_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dato_main_conf_t, zone_size),
      &ngx_http_dato_zone_size_post },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_dato_module_ctx = {
    ngx_http_dato_add_variables,           /* preconfiguration */
    ngx_http_dato_postconfiguration,       /* postconfiguration */

    ngx_http_dato_create_main_conf,        /* create main configuration */
    ngx_http_dato_init_main_conf,          /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_dato_create_loc_conf,         /* create location configuration */
    ngx_http_dato_merge_loc_conf           /* merge location configuration */
};


ngx_module_t  ngx_http_dato_module = {
    NGX_MODULE_V1,
    &ngx_http_dato_module_ctx,             /* module context */
    ngx_http_dato_commands,                /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_dato_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_dato_exit_process,            /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_dato_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_dato_variables; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* all tokens are known now: the shared zone must hold them */

static ngx_int_t
ngx_http_dato_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_dato_main_conf_t  *dmcf;

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dato_module);

    if (dmcf->zone == NULL) {
        return NGX_OK;
    }

    if (ngx_http_dato_shm_check(cf, dmcf->zone) != NGX_CONF_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void *
ngx_http_dato_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_dato_main_conf_t  *dmcf;

    dmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dato_main_conf_t));
    if (dmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     dmcf->enabled = 0;
     *     dmcf->batcher = NULL;
     */

    dmcf->queue_size = NGX_CONF_UNSET_UINT;
    dmcf->zone_size = NGX_CONF_UNSET_SIZE;

    if (ngx_array_init(&dmcf->targets, cf->pool, 4,
                       sizeof(ngx_http_dato_target_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return dmcf;
}


static char *
ngx_http_dato_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_dato_main_conf_t *dmcf = conf;

    /* the values were checked at their directives' lines */

    ngx_conf_init_uint_value(dmcf->queue_size, 10000);
    ngx_conf_init_size_value(dmcf->zone_size, NGX_HTTP_DATO_SHM_SIZE);

    if (dmcf->spool.len
        && ngx_conf_full_name(cf->cycle, &dmcf->spool, 0) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (dmcf->enabled || dmcf->status) {
        dmcf->zone = ngx_http_dato_shm_add(cf, dmcf->zone_size);
        if (dmcf->zone == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_dato_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_dato_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dato_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->publish = 0;
     *     conf->api_url = { 0, NULL };
     *     conf->token = { 0, NULL };
     *     conf->environment = { 0, NULL };
     *     conf->ca_file = { 0, NULL };
     *     conf->secret_header = { 0, NULL };
     *     conf->secret = { 0, NULL };
     *     conf->target = NULL;
     */

    conf->api_timeout = NGX_CONF_UNSET_MSEC;
    conf->retry_timeout = NGX_CONF_UNSET_MSEC;
    conf->rate_limit = NGX_CONF_UNSET_UINT;
    conf->rate_period = NGX_CONF_UNSET_MSEC;
    conf->job_poll = NGX_CONF_UNSET;
    conf->max_records = NGX_CONF_UNSET_UINT;
    conf->job_timeout = NGX_CONF_UNSET_MSEC;
    conf->batch_size = NGX_CONF_UNSET_UINT;
    conf->batch_window = NGX_CONF_UNSET_MSEC;
    conf->events = NGX_CONF_UNSET_UINT;
    conf->wait = NGX_CONF_UNSET_UINT;
    conf->publish_timeout = NGX_CONF_UNSET_MSEC;

    return conf;
}


static char *
ngx_http_dato_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_dato_loc_conf_t *prev = parent;
    ngx_http_dato_loc_conf_t *conf = child;

    ngx_http_dato_merge_values(conf, prev);

    /* "dato_publish" is not inherited: nested locations have no handler */

    if (!conf->publish) {
        return NGX_CONF_OK;
    }

    if (ngx_http_dato_check_publish(cf, conf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_dato_add_target(cf, conf);
}


static void
ngx_http_dato_merge_values(ngx_http_dato_loc_conf_t *conf,
    ngx_http_dato_loc_conf_t *prev)
{
    ngx_conf_merge_str_value(conf->api_url, prev->api_url,
                             "https://site-api.datocms.com");
    ngx_conf_merge_str_value(conf->token, prev->token, "");
    ngx_conf_merge_str_value(conf->environment, prev->environment, "");
    ngx_conf_merge_msec_value(conf->api_timeout, prev->api_timeout, 10000);
    ngx_conf_merge_msec_value(conf->retry_timeout, prev->retry_timeout,
                              300000);
    ngx_conf_merge_uint_value(conf->rate_limit, prev->rate_limit, 0);
    ngx_conf_merge_msec_value(conf->rate_period, prev->rate_period, 3000);
    ngx_conf_merge_value(conf->job_poll, prev->job_poll, 1);
    ngx_conf_merge_str_value(conf->ca_file, prev->ca_file, "");
    ngx_conf_merge_uint_value(conf->max_records, prev->max_records, 5000);

    if (conf->secret_header.data == NULL) {
        conf->secret_header = prev->secret_header;
        conf->secret = prev->secret;
        conf->secret_at = prev->secret_at;
    }
    ngx_conf_merge_msec_value(conf->job_timeout, prev->job_timeout, 600000);
    ngx_conf_merge_uint_value(conf->batch_size, prev->batch_size, 200);
    ngx_conf_merge_msec_value(conf->batch_window, prev->batch_window, 0);

    /* the default depends on the action, known in the location only */
    if (conf->events == NGX_CONF_UNSET_UINT) {
        conf->events = prev->events;
        conf->events_at = prev->events_at;
    }

    if (conf->signing_keys == NULL) {
        conf->signing_keys = prev->signing_keys;
    }
    ngx_conf_merge_uint_value(conf->wait, prev->wait, NGX_HTTP_DATO_WAIT_JOB);
    ngx_conf_merge_msec_value(conf->publish_timeout, prev->publish_timeout,
                              7000);
}


/*
 * What only the merge can see, the settings of several levels together,
 * is told at the line of "dato_publish".
 */

static ngx_int_t
ngx_http_dato_check_publish(ngx_conf_t *cf, ngx_http_dato_loc_conf_t *conf)
{
    if (conf->token.len == 0) {
        ngx_http_dato_conf_log_at(NGX_LOG_EMERG, cf, &conf->publish_at,
                                  "\"%V\" needs \"dato_api_token\" "
                                  "or \"dato_api_token_file\"",
                                  &ngx_http_dato_actions[conf->action]
                                   .directive);
        return NGX_ERROR;
    }

    if (ngx_http_dato_check_events(cf, conf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (conf->wait == NGX_HTTP_DATO_WAIT_RESULT && !conf->job_poll) {
        ngx_http_dato_conf_log_at(NGX_LOG_EMERG, cf, &conf->publish_at,
                                  "\"dato_publish_wait result\" needs "
                                  "\"dato_job_poll on\"");
        return NGX_ERROR;
    }

    if (conf->secret_header.len) {
        ngx_http_dato_check_secret_header(cf, conf);
    }

    return NGX_OK;
}


/*
 * The loop guards: an action may not be led by the webhooks it causes
 * itself, nor by a deletion.  Told at the line of dato_publish_events,
 * wherever the location inherits it from.
 */

static ngx_int_t
ngx_http_dato_check_events(ngx_conf_t *cf, ngx_http_dato_loc_conf_t *conf)
{
    unsigned                 bad;
    const char              *why;
    ngx_http_dato_action_t  *a;

    a = &ngx_http_dato_actions[conf->action];

    if (conf->events == NGX_CONF_UNSET_UINT) {
        conf->events = a->default_events;
        return NGX_OK;
    }

    if (conf->events & a->loop_event) {
        bad = a->loop_event;
        why = a->loop;

    } else if (conf->events & NGX_HTTP_DATO_EVENT_DELETE) {
        bad = NGX_HTTP_DATO_EVENT_DELETE;
        why = a->deleted;

    } else {
        return NGX_OK;
    }

    ngx_http_dato_conf_log_at(NGX_LOG_EMERG, cf, &conf->events_at,
                              "invalid value \"%s\" in "
                              "\"dato_publish_events\" directive, %s",
                              ngx_http_dato_event_name(bad), why);

    return NGX_ERROR;
}


/* where a "dato_publish" location's batches go: its API, token and budget */

static char *
ngx_http_dato_add_target(ngx_conf_t *cf, ngx_http_dato_loc_conf_t *conf)
{
    char                       *rv;
    ngx_http_dato_target_t     *target, **tp;
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_dato_main_conf_t  *dmcf;

    target = ngx_pcalloc(cf->pool, sizeof(ngx_http_dato_target_t));
    if (target == NULL) {
        return NGX_CONF_ERROR;
    }

    target->client.timeout = conf->api_timeout;
    target->client.action = &ngx_http_dato_actions[conf->action];
    target->client.stage = conf->stage;

    /* the core module's merge is done: its resolver is this location's */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    rv = ngx_http_dato_client_conf_init(cf, &target->client, &conf->api_url,
                                        &conf->token, clcf->resolver,
                                        clcf->resolver_timeout);

    if (rv != NGX_CONF_OK) {
        if (rv != NGX_CONF_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"dato_api_url\" \"%V\" %s",
                               &conf->api_url, rv);
        }

        return NGX_CONF_ERROR;
    }

    /* the file's full name, checked at its directive */
    target->client.ca_file = conf->ca_file;

    target->batch_size = conf->batch_size;
    target->batch_window = conf->batch_window;
    target->retry_timeout = conf->retry_timeout;
    target->job_poll = conf->job_poll;
    target->job_timeout = conf->job_timeout;

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dato_module);

    if (ngx_http_dato_target_rate(dmcf, conf, target) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    tp = ngx_array_push(&dmcf->targets);
    if (tp == NULL) {
        return NGX_CONF_ERROR;
    }

    *tp = target;

    /* filled per worker: the conf is the worker's own copy after fork */
    ngx_queue_init(&target->open);
    ngx_queue_init(&target->line);

    conf->target = target;

    return NGX_CONF_OK;
}


/*
 * DatoCMS limits calls per token: every location and worker that uses
 * one token draws from one scheduler entry, found by a hash of the URL
 * and the token, so that the token itself stays out of shared memory
 */

static ngx_int_t
ngx_http_dato_target_rate(ngx_http_dato_main_conf_t *dmcf,
    ngx_http_dato_loc_conf_t *conf, ngx_http_dato_target_t *target)
{
    uint32_t  key;

    key = ngx_crc32_long(target->client.authorization.data,
                         target->client.authorization.len)
          ^ ngx_crc32_long(conf->api_url.data, conf->api_url.len);

    if (ngx_http_dato_shm_key(dmcf->zone, key, conf->rate_limit,
                              &target->rate.index)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * a publish keeps the key of the token and the URL, which batches in
     * the zone and spool files of older builds name
     */

    target->key = key;
    target->action = conf->action;

    if (conf->action != NGX_HTTP_DATO_PUBLISH) {
        target->key ^= ngx_crc32_long(
                           ngx_http_dato_actions[conf->action].name.data,
                           ngx_http_dato_actions[conf->action].name.len)
                       ^ ngx_crc32_long(conf->stage.data, conf->stage.len);
    }

    target->rate.zone = dmcf->zone;
    target->rate.cap = conf->rate_limit;
    target->rate.period = conf->rate_period;
    target->rate.timeout = conf->api_timeout;

    return NGX_OK;
}


/*
 * dato_publish, dato_unpublish and dato_move_to_stage: one setter, the
 * command's post names the action
 */

static char *
ngx_http_dato_publish(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t                  *value;
    ngx_uint_t                  action;
    ngx_http_dato_action_t     *a;
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_dato_main_conf_t  *dmcf;

    a = cmd->post ? cmd->post : &ngx_http_dato_actions[NGX_HTTP_DATO_PUBLISH];
    action = a - ngx_http_dato_actions;

    if (dlcf->publish) {
        if (dlcf->action == action) {
            return "is duplicate";
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" directive is a conflict with \"%V\"",
                           &cmd->name,
                           &ngx_http_dato_actions[dlcf->action].directive);
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    /* the last content handler would win, silently */

    if (clcf->handler == ngx_http_dato_status_handler) {
        return "is a conflict with \"dato_publish_status\"";
    }

    if (action == NGX_HTTP_DATO_MOVE_TO_STAGE) {
        value = cf->args->elts;

        if (!ngx_http_dato_valid_word((char *) value[1].data,
                                       value[1].len))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, "
                               "a stage is 1 to %d letters, digits, \"_\" "
                               "and \"-\"", &value[1], &cmd->name,
                               NGX_HTTP_DATO_WORD_MAX_LEN);
            return NGX_CONF_ERROR;
        }

        dlcf->stage = value[1];
    }

    dlcf->publish = 1;
    dlcf->action = action;
    dlcf->publish_at.file = cf->conf_file->file.name;
    dlcf->publish_at.line = cf->conf_file->line;

    clcf->handler = ngx_http_dato_handler;

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dato_module);
    dmcf->enabled = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_dato_publish_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_dato_main_conf_t  *dmcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_dato_status_handler) {
        return "is duplicate";
    }

    if (dlcf->publish) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" directive is a conflict with \"%V\"",
                           &cmd->name,
                           &ngx_http_dato_actions[dlcf->action].directive);
        return NGX_CONF_ERROR;
    }

    clcf->handler = ngx_http_dato_status_handler;

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dato_module);
    dmcf->status = 1;

    return NGX_CONF_OK;
}


/*
 * The URL is checked here, at its line: the host is resolved later, in
 * the merge, for the locations that use it.  Its user info would be sent
 * to whatever answers, and a query or a fragment would end up in the
 * middle of every call's URL.
 */

static char *
ngx_http_dato_api_url(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    u_char      *p, *host, *last;
    ngx_str_t   *value, url;
    ngx_url_t    u;
    ngx_uint_t   port;

    if (dlcf->api_url.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    url = value[1];

    if (url.len >= 8
        && ngx_strncasecmp(url.data, (u_char *) "https://", 8) == 0)
    {
        host = url.data + 8;
        port = 443;

    } else if (url.len >= 7
               && ngx_strncasecmp(url.data, (u_char *) "http://", 7) == 0)
    {
        host = url.data + 7;
        port = 80;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must start with \"http://\" or \"https://\"",
                           &url, &cmd->name);
        return NGX_CONF_ERROR;
    }

    last = url.data + url.len;

    for (p = host; p < last && *p != '/'; p++) {

        /* the URL is not shown: what is before "@" may be a password */

        if (*p == '@') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value in \"%V\" directive, "
                               "user info (\"user@\") is not allowed: "
                               "the token goes in \"dato_api_token\"",
                               &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    for (p = host; p < last; p++) {
        if (*p == '?' || *p == '#') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, "
                               "a %s is not allowed", &url, &cmd->name,
                               *p == '?' ? "query string" : "fragment");
            return NGX_CONF_ERROR;
        }

        if (*p <= ' ' || *p == 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, "
                               "spaces and control characters are not "
                               "allowed", &url, &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    for (p = host; p < last && *p != '/'; p++) { /* void */ }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url.data = host;
    u.url.len = p - host;
    u.default_port = port;
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, "
                               "%s", &url, &cmd->name, u.err);
        }

        return NGX_CONF_ERROR;
    }

    if (u.host.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "no host", &url, &cmd->name);
        return NGX_CONF_ERROR;
    }

    dlcf->api_url = url;

    return NGX_CONF_OK;
}


/*
 * dato_api_token and dato_api_token_file set one token: both at one level
 * are a conflict, not a duplicate; at different levels, the inner wins
 */

static char *
ngx_http_dato_api_token(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t  *value;

    if (dlcf->token.data) {
        return dlcf->token_file
               ? "is a conflict with \"dato_api_token_file\" at this level"
               : "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_http_dato_check_token(cf, &cmd->name, &value[1], NULL)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    dlcf->token = value[1];

    return NGX_CONF_OK;
}


/*
 * The token is read once, here, so that it can live outside nginx.conf
 * with stricter permissions; trailing whitespace (a final newline) is cut.
 */

static char *
ngx_http_dato_token_file(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t  *value, token;

    if (dlcf->token.data) {
        return dlcf->token_file
               ? "is duplicate"
               : "is a conflict with \"dato_api_token\" at this level";
    }

    value = cf->args->elts;

    if (ngx_http_dato_read_secret(cf, &value[1], &token) != NGX_OK
        || ngx_http_dato_check_token(cf, &cmd->name, &token, &value[1])
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    dlcf->token = token;
    dlcf->token_file = 1;

    return NGX_CONF_OK;
}


/*
 * The *_file directives: a secret is read once, here, so that it can live
 * outside nginx.conf with stricter permissions; trailing whitespace (a
 * final newline) is cut.  path becomes the file's full name.
 */

static ngx_int_t
ngx_http_dato_read_secret(ngx_conf_t *cf, ngx_str_t *path, ngx_str_t *secret)
{
    u_char           *p;
    ssize_t           n;
    ngx_int_t         rc;
    ngx_file_t        file;
    ngx_file_info_t   fi;

    if (ngx_conf_full_name(cf->cycle, path, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.name = *path;
    file.log = cf->log;

    file.fd = ngx_open_file(path->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", path);
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%V\" failed", path);
        goto done;
    }

    if (ngx_file_size(&fi) > 4096) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" is too big for a secret", path);
        goto done;
    }

    p = ngx_pnalloc(cf->pool, (size_t) ngx_file_size(&fi) + 1);
    if (p == NULL) {
        goto done;
    }

    n = ngx_read_file(&file, p, (size_t) ngx_file_size(&fi), 0);

    if (n == NGX_ERROR) {
        goto done;
    }

    while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'
                     || p[n - 1] == ' ' || p[n - 1] == '\t'))
    {
        n--;
    }

    p[n] = '\0';
    secret->data = p;
    secret->len = n;
    rc = NGX_OK;

done:

    ngx_close_file(file.fd);

    return rc;
}


/*
 * dato_webhook_signing_secret and its _file form (post set): each adds a
 * key, so that a sender's old and new secrets both pass while it rotates.
 * The message never shows the secret.
 */

static char *
ngx_http_dato_signing_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    char       *why;
    ngx_str_t  *value, secret, *key;

#if !(NGX_OPENSSL)

    /* the HMAC is OpenSSL's, as nginx links it */

    return "needs nginx built with OpenSSL (--with-http_ssl_module)";

#endif

    value = cf->args->elts;
    secret = value[1];

    if (cmd->post && ngx_http_dato_read_secret(cf, &value[1], &secret)
                     != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (dlcf->signing_keys == NULL) {
        dlcf->signing_keys = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
        if (dlcf->signing_keys == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    key = ngx_array_push(dlcf->signing_keys);
    if (key == NULL) {
        return NGX_CONF_ERROR;
    }

    why = ngx_http_dato_sign_key(cf->pool, &secret, key);

    if (why == NGX_CONF_ERROR) {
        return NGX_CONF_ERROR;
    }

    if (why == NULL) {
        return NGX_CONF_OK;
    }

    if (cmd->post) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value in \"%V\" directive, the secret "
                           "in \"%V\" %s", &cmd->name, &value[1], why);

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value in \"%V\" directive, the secret "
                           "%s", &cmd->name, why);
    }

    return NGX_CONF_ERROR;
}


/*
 * The token goes into one header line: no spaces or line breaks in it.
 * It is a secret, so that the message never shows it.
 */

static ngx_int_t
ngx_http_dato_check_token(ngx_conf_t *cf, ngx_str_t *name, ngx_str_t *token,
    ngx_str_t *file)
{
    ngx_uint_t  i;

    if (token->len == 0) {
        if (file) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "empty token in \"%V\" directive, "
                               "\"%V\" is empty", name, file);
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "empty token in \"%V\" directive", name);
        }

        return NGX_ERROR;
    }

    for (i = 0; i < token->len; i++) {
        if (token->data[i] > 0x20 && token->data[i] != 0x7f) {
            continue;
        }

        if (file) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid token in \"%V\" directive, \"%V\" "
                               "holds spaces or control characters",
                               name, file);
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid token in \"%V\" directive, "
                               "it has spaces or control characters",
                               name);
        }

        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the file is looked at now, so that a wrong path fails "nginx -t" */

static char *
ngx_http_dato_ca_file(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t        *value, name;
    ngx_file_info_t   fi;

    if (dlcf->ca_file.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"\" in \"%V\" directive",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_file_info(name.data, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "invalid value \"%V\" in \"%V\" directive, "
                           ngx_file_info_n " failed", &name, &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (!ngx_is_file(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it is not a file", &name, &cmd->name);
        return NGX_CONF_ERROR;
    }

    dlcf->ca_file = name;

    return NGX_CONF_OK;
}


static char *
ngx_http_dato_environment(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t  *value;

    if (dlcf->environment.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (!ngx_http_dato_valid_env((char *) value[1].data, value[1].len)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "an environment is 1 to %d lowercase letters, "
                           "digits and dashes", &value[1], &cmd->name,
                           NGX_HTTP_DATO_ENV_MAX_LEN);
        return NGX_CONF_ERROR;
    }

    dlcf->environment = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_dato_publish_events(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    unsigned     bit;
    ngx_str_t   *value;
    ngx_uint_t   i;

    if (dlcf->events != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    dlcf->events = 0;

    /* which events an action may take is known at the merge */
    dlcf->events_at.file = cf->conf_file->file.name;
    dlcf->events_at.line = cf->conf_file->line;

    for (i = 1; i < cf->args->nelts; i++) {
        bit = ngx_http_dato_event_bit((char *) value[i].data, value[i].len);

        if (bit == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, "
                               "expected \"create\", \"update\", "
                               "\"publish\" or \"unpublish\"",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        dlcf->events |= bit;
    }

    return NGX_CONF_OK;
}


/* ngx_conf_set_enum_slot()'s message does not name the directive */

static char *
ngx_http_dato_publish_wait(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t        *value;
    ngx_conf_enum_t  *e;

    if (dlcf->wait != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (e = ngx_http_dato_wait; e->name.len; e++) {
        if (e->name.len == value[1].len
            && ngx_strcasecmp(e->name.data, value[1].data) == 0)
        {
            dlcf->wait = e->value;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive, "
                       "expected \"none\", \"job\" or \"result\"",
                       &value[1], &cmd->name);

    return NGX_CONF_ERROR;
}


/*
 * dato_webhook_secret X-Webhook-Secret value;
 *
 * A header that no request can carry would refuse every webhook: the name
 * is an HTTP token, and the value has no line break and no space at
 * either end, which nginx cuts from request headers.  The value is a
 * secret: no message shows it.
 */

static char *
ngx_http_dato_webhook_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t  *value;

    if (dlcf->secret_header.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    return ngx_http_dato_set_secret(cf, cmd, dlcf, &value[1], &value[2]);
}


static char *
ngx_http_dato_webhook_secret_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t  *value, secret;

    if (dlcf->secret_header.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_http_dato_read_secret(cf, &value[2], &secret) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_dato_set_secret(cf, cmd, dlcf, &value[1], &secret);
}


/* the header's name and value, as nginx will read them from a request */

static char *
ngx_http_dato_set_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_dato_loc_conf_t *dlcf, ngx_str_t *name, ngx_str_t *secret)
{
    u_char      c;
    ngx_uint_t  i;

    if (name->len == 0 || secret->len == 0) {
        return "needs a header name and a value";
    }

    for (i = 0; i < name->len; i++) {
        c = name->data[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9')
            || (c > 0x20 && c < 0x7f
                && ngx_strchr("!#$%&'*+-.^_`|~", c) != NULL))
        {
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid header name \"%V\" in \"%V\" directive",
                           name, &cmd->name);
        return NGX_CONF_ERROR;
    }

    c = secret->data[secret->len - 1];

    if (secret->data[0] == ' ' || secret->data[0] == '\t'
        || c == ' ' || c == '\t'
        || ngx_strlchr(secret->data, secret->data + secret->len, '\r')
        || ngx_strlchr(secret->data, secret->data + secret->len, '\n'))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value in \"%V\" directive, a header "
                           "value cannot start or end with a space, or "
                           "hold a line break", &cmd->name);
        return NGX_CONF_ERROR;
    }

    dlcf->secret_header = *name;
    dlcf->secret = *secret;
    dlcf->secret_at.file = cf->conf_file->file.name;
    dlcf->secret_at.line = cf->conf_file->line;

    return NGX_CONF_OK;
}


/*
 * nginx drops request headers whose names have other characters than
 * letters, digits and "-" (and "_" with "underscores_in_headers on"),
 * unless "ignore_invalid_headers off": this server's settings are known
 * only now
 */

static void
ngx_http_dato_check_secret_header(ngx_conf_t *cf,
    ngx_http_dato_loc_conf_t *conf)
{
    u_char                     c;
    ngx_uint_t                 i;
    ngx_http_core_srv_conf_t  *cscf;

    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);

    if (!cscf->ignore_invalid_headers) {
        return;
    }

    for (i = 0; i < conf->secret_header.len; i++) {
        c = conf->secret_header.data[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9') || c == '-'
            || (c == '_' && cscf->underscores_in_headers))
        {
            continue;
        }

        ngx_http_dato_conf_log_at(NGX_LOG_WARN, cf, &conf->secret_at,
                                  "header name \"%V\" in "
                                  "\"dato_webhook_secret\" directive has "
                                  "\"%c\", and nginx ignores such request "
                                  "headers%s: every webhook would be "
                                  "refused",
                                  &conf->secret_header, c,
                                  c == '_'
                                  ? " without \"underscores_in_headers on\""
                                  : " without \"ignore_invalid_headers off\"");
        return;
    }
}


/* dato_rate_limit 50 3s; calls per token in any period */

static char *
ngx_http_dato_rate_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, every;
    ngx_msec_t   period;

    if (dlcf->rate_limit != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);

    if (n < 1 || n > NGX_HTTP_DATO_RATE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number of calls \"%V\" in \"%V\" "
                           "directive, expected 1 to %d",
                           &value[1], &cmd->name, NGX_HTTP_DATO_RATE_MAX);
        return NGX_CONF_ERROR;
    }

    period = 3000;
    ngx_str_set(&every, "3s");

    if (cf->args->nelts == 3) {
        period = ngx_parse_time(&value[2], 0);

        if (period == (ngx_msec_t) NGX_ERROR || period == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid period \"%V\" in \"%V\" directive",
                               &value[2], &cmd->name);
            return NGX_CONF_ERROR;
        }

        every = value[2];
    }

    /*
     * DatoCMS allows 60 calls per 3 s: a cap above it is not wrong (a plan
     * may announce more), but it does not let the module call faster
     */

    if ((ngx_msec_t) n * 3000 > NGX_HTTP_DATO_DATOCMS_LIMIT * period) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "%i calls per %V in \"%V\" directive are more "
                           "than DatoCMS allows (%d per 3s): it is only a "
                           "cap, the module also follows the API's "
                           "X-RateLimit-Limit", n, &every, &cmd->name,
                           NGX_HTTP_DATO_DATOCMS_LIMIT);
    }

    dlcf->rate_limit = n;
    dlcf->rate_period = period;

    return NGX_CONF_OK;
}


/* a number within bounds; "high" -1 is no upper bound, as nginx has it */

static char *
ngx_http_dato_check_num(ngx_conf_t *cf, void *post, void *data)
{
    ngx_conf_num_bounds_t  *bounds = post;
    ngx_int_t              *np = data;

    ngx_str_t  *value;

    if (*np >= bounds->low && (bounds->high == -1 || *np <= bounds->high)) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    if (bounds->high == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be at least %i",
                           &value[1], &value[0], bounds->low);

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be between %i and %i",
                           &value[1], &value[0], bounds->low, bounds->high);
    }

    return NGX_CONF_ERROR;
}


static char *
ngx_http_dato_check_msec(ngx_conf_t *cf, void *post, void *data)
{
    ngx_http_dato_msec_bounds_t  *bounds = post;
    ngx_msec_t                   *mp = data;

    ngx_str_t  *value;

    value = cf->args->elts;

    if (*mp == 0 && bounds->zero) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be more than 0: %s",
                           &value[1], &value[0], bounds->zero);
        return NGX_CONF_ERROR;
    }

    if (bounds->warn && *mp > bounds->warn) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "value \"%V\" in \"%V\" directive %s",
                           &value[1], &value[0], bounds->too_long);
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_dato_check_zone_size(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    ngx_str_t  *value;

    if (*sp >= NGX_HTTP_DATO_SHM_SIZE_MIN) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive, "
                       "it must be at least %uzk",
                       &value[1], &value[0],
                       (size_t) NGX_HTTP_DATO_SHM_SIZE_MIN / 1024);

    return NGX_CONF_ERROR;
}


/*
 * ngx_conf_log_error() at another directive's line: the merge runs when
 * the whole http{} block has been read, and cf is at its end
 */

static void ngx_cdecl
ngx_http_dato_conf_log_at(ngx_uint_t level, ngx_conf_t *cf,
    ngx_http_dato_conf_at_t *at, const char *fmt, ...)
{
    u_char   *p, errstr[NGX_MAX_CONF_ERRSTR];
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(errstr, errstr + NGX_MAX_CONF_ERRSTR, fmt, args);
    va_end(args);

    if (at->file.data == NULL) {
        ngx_conf_log_error(level, cf, 0, "%*s", p - errstr, errstr);
        return;
    }

    ngx_log_error(level, cf->log, 0, "%*s in %V:%ui",
                  p - errstr, errstr, &at->file, at->line);
}


static ngx_int_t
ngx_http_dato_init_process(ngx_cycle_t *cycle)
{
    ngx_http_dato_main_conf_t  *dmcf;

    dmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_dato_module);

    if (dmcf == NULL || !dmcf->enabled) {
        return NGX_OK;
    }

    /* jansson would read /dev/urandom on first use, inside a request */
    json_object_seed(0);

    /* calls that a dead worker of this slot had out are over */
    ngx_http_dato_shm_init_process(dmcf->zone);

    dmcf->batcher = ngx_http_dato_batcher_create(cycle->log,
                                                 dmcf->queue_size,
                                                 dmcf->zone, &dmcf->targets,
                                                 &dmcf->spool);
    if (dmcf->batcher == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_dato_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_dato_main_conf_t  *dmcf;

    dmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_dato_module);

    if (dmcf == NULL || dmcf->batcher == NULL) {
        return;
    }

    ngx_http_dato_batcher_destroy(dmcf->batcher);
    dmcf->batcher = NULL;
}
