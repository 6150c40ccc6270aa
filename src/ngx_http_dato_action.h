
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The bulk record actions a location can take: what each one is called
 * in nginx.conf, in the API's path and body, on the status page and in
 * the error log, and which webhooks it would cause itself.  Constant
 * data, known to every room that names an action; no state.
 */


#ifndef _NGX_HTTP_DATO_ACTION_H_INCLUDED_
#define _NGX_HTTP_DATO_ACTION_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


typedef enum {
    NGX_HTTP_DATO_PUBLISH = 0,
    NGX_HTTP_DATO_UNPUBLISH,
    NGX_HTTP_DATO_MOVE_TO_STAGE,
    NGX_HTTP_DATO_ACTIONS
} ngx_http_dato_action_e;


typedef struct {
    /* "publish": the path's last part, $dato_action, the status page */
    ngx_str_t                     name;

    /* "dato_publish": the directive, for nginx -t's messages */
    ngx_str_t                     directive;

    /* "item_bulk_publish_operation": the body's data.type */
    const char                   *type;

    /* "publishing": "gave up publishing 3 records" */
    const char                   *verb;

    /* "publish": a Prometheus label value */
    const char                   *label;

    /* the event the action itself causes, and why taking it is a loop */
    unsigned                      loop_event;
    const char                   *loop;

    /* why a "delete" webhook cannot lead to the action */
    const char                   *deleted;

    /* dato_publish_events when none is set */
    unsigned                      default_events;
} ngx_http_dato_action_t;


extern ngx_http_dato_action_t  ngx_http_dato_actions[NGX_HTTP_DATO_ACTIONS];


#endif /* _NGX_HTTP_DATO_ACTION_H_INCLUDED_ */
