
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
#include <curl/curl.h>
#include <jansson.h>

#include "ngx_http_dato.h"
#include "ngx_http_dato_handler.h"
#include "ngx_http_dato_status.h"


static ngx_int_t ngx_http_dato_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_dato_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_dato_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_dato_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_dato_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_dato_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_dato_publish(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_publish_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_token_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_environment(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_events(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_rate_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dato_webhook_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_dato_init_process(ngx_cycle_t *cycle);
static void ngx_http_dato_exit_process(ngx_cycle_t *cycle);


static ngx_conf_num_bounds_t  ngx_http_dato_batch_size_bounds = {
    ngx_conf_check_num_bounds, 1, 200
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
      NULL },

    { ngx_string("dato_api_ca_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, ca_file),
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

    { ngx_string("dato_api_token"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, token),
      NULL },

    { ngx_string("dato_api_token_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dato_token_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_api_url"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, api_url),
      NULL },

    { ngx_string("dato_api_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, api_timeout),
      NULL },

    { ngx_string("dato_retry_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, retry_timeout),
      NULL },

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
      ngx_http_dato_events,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dato_publish_wait"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, wait),
      &ngx_http_dato_wait },

    { ngx_string("dato_publish_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dato_loc_conf_t, publish_timeout),
      NULL },

    { ngx_string("dato_queue_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dato_main_conf_t, queue_size),
      NULL },

    { ngx_string("dato_zone_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dato_main_conf_t, zone_size),
      NULL },

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

    return dmcf;
}


static char *
ngx_http_dato_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_dato_main_conf_t *dmcf = conf;

    ngx_conf_init_uint_value(dmcf->queue_size, 10000);

    if (dmcf->queue_size == 0) {
        return "\"dato_queue_size\" must be at least 1";
    }

    ngx_conf_init_size_value(dmcf->zone_size, NGX_HTTP_DATO_SHM_SIZE);

    if (dmcf->zone_size < NGX_HTTP_DATO_SHM_SIZE_MIN) {
        return "\"dato_zone_size\" must be at least 32k";
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

    char                       *rv;
    uint32_t                    key;
    ngx_file_info_t             fi;
    ngx_http_dato_target_t     *target;
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_dato_main_conf_t  *dmcf;

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
    }
    ngx_conf_merge_msec_value(conf->job_timeout, prev->job_timeout, 600000);
    ngx_conf_merge_uint_value(conf->batch_size, prev->batch_size, 200);
    ngx_conf_merge_msec_value(conf->batch_window, prev->batch_window, 0);
    ngx_conf_merge_uint_value(conf->events, prev->events,
                              NGX_HTTP_DATO_EVENT_CREATE
                              |NGX_HTTP_DATO_EVENT_UPDATE);
    ngx_conf_merge_uint_value(conf->wait, prev->wait, NGX_HTTP_DATO_WAIT_JOB);
    ngx_conf_merge_msec_value(conf->publish_timeout, prev->publish_timeout,
                              7000);

    /* "dato_publish" is not inherited: nested locations have no handler */

    if (!conf->publish) {
        return NGX_CONF_OK;
    }

    if (conf->token.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dato_publish\" needs \"dato_api_token\" or "
                           "\"dato_api_token_file\"");
        return NGX_CONF_ERROR;
    }

    if (conf->wait == NGX_HTTP_DATO_WAIT_RESULT && !conf->job_poll) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dato_publish_wait result\" needs "
                           "\"dato_job_poll on\"");
        return NGX_CONF_ERROR;
    }

    if (conf->api_timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dato_api_timeout\" must not be 0");
        return NGX_CONF_ERROR;
    }

    target = ngx_pcalloc(cf->pool, sizeof(ngx_http_dato_target_t));
    if (target == NULL) {
        return NGX_CONF_ERROR;
    }

    target->client.timeout = conf->api_timeout;

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

    if (conf->ca_file.len) {
        if (ngx_conf_full_name(cf->cycle, &conf->ca_file, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        if (ngx_file_info(conf->ca_file.data, &fi) == NGX_FILE_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               ngx_file_info_n " \"%V\" failed",
                               &conf->ca_file);
            return NGX_CONF_ERROR;
        }

        target->client.ca_file = conf->ca_file;
    }

    target->batch_size = conf->batch_size;
    target->batch_window = conf->batch_window;
    target->retry_timeout = conf->retry_timeout;

    /*
     * DatoCMS limits calls per token: every location and worker that uses
     * one token draws from one scheduler entry, found by a hash of the URL
     * and the token, so that the token itself stays out of shared memory
     */

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dato_module);

    target->job_poll = conf->job_poll;
    target->job_timeout = conf->job_timeout;

    key = ngx_crc32_long(target->client.authorization.data,
                         target->client.authorization.len)
          ^ ngx_crc32_long(conf->api_url.data, conf->api_url.len);

    if (ngx_http_dato_shm_key(dmcf->zone, key, conf->rate_limit,
                              &target->rate.index)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    target->rate.zone = dmcf->zone;
    target->rate.cap = conf->rate_limit;
    target->rate.period = conf->rate_period;
    target->rate.timeout = conf->api_timeout;

    /* filled per worker: the conf is the worker's own copy after fork */
    ngx_queue_init(&target->open);
    ngx_queue_init(&target->line);

    conf->target = target;

    return NGX_CONF_OK;
}


static char *
ngx_http_dato_publish(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_dato_main_conf_t  *dmcf;

    if (dlcf->publish) {
        return "is duplicate";
    }

    dlcf->publish = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_dato_handler;

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dato_module);
    dmcf->enabled = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_dato_publish_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_dato_main_conf_t  *dmcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_dato_status_handler) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_dato_status_handler;

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dato_module);
    dmcf->status = 1;

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

    u_char           *p;
    ssize_t           n;
    ngx_str_t        *value, name;
    ngx_file_t        file;
    ngx_file_info_t   fi;

    if (dlcf->token.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.name = name;
    file.log = cf->log;

    file.fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &name);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%V\" failed", &name);
        goto failed;
    }

    if (ngx_file_size(&fi) > 4096) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" is too big for an API token", &name);
        goto failed;
    }

    p = ngx_pnalloc(cf->pool, (size_t) ngx_file_size(&fi) + 1);
    if (p == NULL) {
        goto failed;
    }

    n = ngx_read_file(&file, p, (size_t) ngx_file_size(&fi), 0);

    if (n == NGX_ERROR) {
        goto failed;
    }

    while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'
                     || p[n - 1] == ' ' || p[n - 1] == '\t'))
    {
        n--;
    }

    if (n == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dato_api_token_file\" \"%V\" is empty", &name);
        goto failed;
    }

    p[n] = '\0';
    dlcf->token.data = p;
    dlcf->token.len = n;

    ngx_close_file(file.fd);

    return NGX_CONF_OK;

failed:

    ngx_close_file(file.fd);

    return NGX_CONF_ERROR;
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
                           "invalid environment \"%V\": lowercase letters, "
                           "digits and dashes only", &value[1]);
        return NGX_CONF_ERROR;
    }

    dlcf->environment = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_dato_events(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
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

    for (i = 1; i < cf->args->nelts; i++) {
        bit = ngx_http_dato_event_bit((char *) value[i].data, value[i].len);

        if (bit == NGX_HTTP_DATO_EVENT_PUBLISH) {

            /* a bulk publish sends a "publish" webhook per record */

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "event \"publish\" would publish in a loop: "
                               "each publish sends a \"publish\" webhook");
            return NGX_CONF_ERROR;
        }

        if (bit == NGX_HTTP_DATO_EVENT_DELETE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "event \"delete\" cannot be published: "
                               "the record is gone");
            return NGX_CONF_ERROR;
        }

        if (bit == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown event \"%V\", expected \"create\", "
                               "\"update\" or \"unpublish\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        dlcf->events |= bit;
    }

    return NGX_CONF_OK;
}


/* dato_webhook_secret X-Webhook-Secret value; */

static char *
ngx_http_dato_webhook_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_str_t  *value;

    if (dlcf->secret_header.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0 || value[2].len == 0) {
        return "needs a header name and a value";
    }

    dlcf->secret_header = value[1];
    dlcf->secret = value[2];

    return NGX_CONF_OK;
}


/* dato_rate_limit 50 3s; calls per token in any period */

static char *
ngx_http_dato_rate_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dato_loc_conf_t *dlcf = conf;

    ngx_int_t    n;
    ngx_msec_t   period;
    ngx_str_t   *value;

    if (dlcf->rate_limit != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);

    if (n < 1 || n > NGX_HTTP_DATO_RATE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number of calls \"%V\", expected 1 to %d",
                           &value[1], NGX_HTTP_DATO_RATE_MAX);
        return NGX_CONF_ERROR;
    }

    period = 3000;

    if (cf->args->nelts == 3) {
        period = ngx_parse_time(&value[2], 0);

        if (period == (ngx_msec_t) NGX_ERROR || period == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid period \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }
    }

    dlcf->rate_limit = n;
    dlcf->rate_period = period;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_dato_init_process(ngx_cycle_t *cycle)
{
    ngx_http_dato_main_conf_t  *dmcf;

    dmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_dato_module);

    if (dmcf == NULL || !dmcf->enabled) {
        return NGX_OK;
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "dato: curl_global_init() failed");
        return NGX_ERROR;
    }

    /* jansson would read /dev/urandom on first use, inside a request */
    json_object_seed(0);

    /* calls that a dead worker of this slot had out are over */
    ngx_http_dato_shm_init_process(dmcf->zone);

    dmcf->batcher = ngx_http_dato_batcher_create(cycle->log,
                                                 dmcf->queue_size,
                                                 dmcf->zone);
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

    curl_global_cleanup();
}
