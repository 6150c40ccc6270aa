
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * What the module's files share: its version and its configuration.
 */


#ifndef _NGX_HTTP_DATO_H_INCLUDED_
#define _NGX_HTTP_DATO_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <nginx.h>


/*
 * The batcher's types, by name only: the files that use them include
 * ngx_http_dato_batch.h, and the others see neither it nor what it
 * includes (the client, and through it the curl bridge)
 */
typedef struct ngx_http_dato_batcher_s  ngx_http_dato_batcher_t;
typedef struct ngx_http_dato_target_s   ngx_http_dato_target_t;


/* the one place that names the module's version */
#define NGX_HTTP_DATO_VERSION     "0.1.0"
#define NGX_HTTP_DATO_USER_AGENT                                              \
    "ngx_http_dato_module/" NGX_HTTP_DATO_VERSION " nginx/" NGINX_VERSION


#define NGX_HTTP_DATO_WAIT_NONE    0
#define NGX_HTTP_DATO_WAIT_JOB     1
#define NGX_HTTP_DATO_WAIT_RESULT  2


/* a directive's place in the configuration, for what the merge checks */
typedef struct {
    ngx_str_t                     file;
    ngx_uint_t                    line;
} ngx_http_dato_conf_at_t;


typedef struct {
    ngx_uint_t                    queue_size;
    size_t                        zone_size;

    /* dato_spool_file: where a stop leaves what it could not send */
    ngx_str_t                     spool;

    /* some location has dato_publish: workers need a batcher */
    ngx_flag_t                    enabled;

    /* some location has dato_publish or dato_publish_status */
    ngx_flag_t                    status;
    ngx_shm_zone_t               *zone;

    /* ngx_http_dato_target_t *: every dato_publish location's */
    ngx_array_t                   targets;

    /* per worker, made in init_process */
    ngx_http_dato_batcher_t      *batcher;
} ngx_http_dato_main_conf_t;


typedef struct {
    /* dato_publish, dato_unpublish or dato_move_to_stage: the handler's */
    ngx_flag_t                    publish;
    ngx_http_dato_conf_at_t       publish_at;

    /* which of them, see ngx_http_dato_action.h, and its stage */
    ngx_uint_t                    action;
    ngx_str_t                     stage;

    ngx_str_t                     api_url;
    ngx_str_t                     token;
    /* the token was read by dato_api_token_file, not dato_api_token */
    ngx_flag_t                    token_file;
    ngx_str_t                     environment;
    ngx_msec_t                    api_timeout;
    ngx_msec_t                    retry_timeout;
    /* dato_rate_limit: a cap, 0 for what the API announces */
    ngx_uint_t                    rate_limit;
    ngx_msec_t                    rate_period;
    ngx_flag_t                    job_poll;
    ngx_msec_t                    job_timeout;
    ngx_str_t                     ca_file;

    ngx_uint_t                    max_records;

    /* dato_webhook_secret: the header a call must carry, and its value */
    ngx_str_t                     secret_header;
    ngx_str_t                     secret;
    ngx_http_dato_conf_at_t       secret_at;

    /* ngx_str_t: the decoded dato_webhook_signing_secret keys, or NULL */
    ngx_array_t                  *signing_keys;

    ngx_uint_t                    batch_size;
    ngx_msec_t                    batch_window;

    /* dato_publish_events, unset for the action's own default */
    ngx_uint_t                    events;
    ngx_http_dato_conf_at_t       events_at;
    ngx_uint_t                    wait;
    ngx_msec_t                    publish_timeout;

    /* made for locations with dato_publish */
    ngx_http_dato_target_t       *target;
} ngx_http_dato_loc_conf_t;


extern ngx_module_t  ngx_http_dato_module;


#endif /* _NGX_HTTP_DATO_H_INCLUDED_ */
