#!/usr/bin/perl

# The other bulk actions: dato_unpublish and dato_move_to_stage batch,
# schedule, split and account for records as dato_publish does, through
# POST /items/bulk/unpublish and /items/bulk/move-to-stage, and records of
# different actions (or stages) never share a call.  Their nginx -t
# cases (loop guards, conflicts, stages) are in t/14-conftest.t.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook ids_body post_req jobs_of);

my $SLOW = $ENV{TEST_NGINX_USE_VALGRIND} ? 4 : 1;

my $t = DatoTest->new(workers => 1);
$t->start_mock;

$t->run(http => <<'EOF');
    dato_api_url %%MOCK%%;
    dato_api_token test-token;
    dato_batch_window 300ms;
    dato_publish_timeout 7s;

    log_format actions '$request_uri $dato_action $dato_records';

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;

        access_log %%TMP%%/actions.log actions;

        location /publish     { dato_publish; }
        location /unpublish   { dato_unpublish; }
        location /review      { dato_move_to_stage review; }
        location /translation { dato_move_to_stage translation; }

        location /unpublish-on-publish {
            dato_unpublish;
            dato_publish_events publish;
        }

        location /status { dato_publish_status; }
    }
EOF

# the mock's 202 calls to /items/bulk/$action, oldest first
sub calls_of {
    my ($action) = @_;
    my @c = sort { $a->{t} <=> $b->{t} }
            grep { $_->{method} eq 'POST' && $_->{status} == 202
                   && $_->{path} eq "/items/bulk/$action" }
            $t->mock_requests;
    return @c;
}

sub body_of { return DatoTest::decode_json($_[0]->{body}) }

sub wait_calls {
    my ($action, $n) = @_;
    return $t->wait_for(sub { calls_of($action) >= $n }, 5 * $SLOW, 0.05);
}

###########################################################################
# one webhook each: the endpoint, the operation type, the attributes

{
    my @u = ids_of(100, 2);
    my $r = $t->post_json('/unpublish', ids_body(@u), timeout => 10 * $SLOW);
    is($r->{status}, 202, 'unpublish: 202');
    is(scalar(jobs_of($r)), 1, 'unpublish: one job ID');
    ok(wait_calls('unpublish', 1), 'unpublish: one call');
    my ($c) = calls_of('unpublish');
    my $d = body_of($c)->{data};
    is($d->{type}, 'item_bulk_unpublish_operation', 'unpublish: type');
    ok(!exists $d->{attributes}, 'unpublish: no attributes');
    is_deeply($c->{ids}, \@u, 'unpublish: its records');

    my @s = ids_of(200, 3);
    $r = $t->post_json('/review', ids_body(@s), timeout => 10 * $SLOW);
    is($r->{status}, 202, 'move to stage: 202');
    ok(wait_calls('move-to-stage', 1), 'move to stage: one call');
    ($c) = calls_of('move-to-stage');
    $d = body_of($c)->{data};
    is($d->{type}, 'item_bulk_move_to_stage_operation', 'move to stage: type');
    is_deeply($d->{attributes}, { stage => 'review' }, 'move to stage: stage');
    is_deeply($c->{ids}, \@s, 'move to stage: its records');

    is(scalar(calls_of('publish')), 0, 'no publish call for either');
    $t->mock_reset;
}

###########################################################################
# at once, to every location: batched per action and stage, never mixed

{
    my (%ids, @reqs);
    my $n = 1000;
    for my $path (qw(/publish /unpublish /review /translation)) {
        for (1 .. 3) {
            my @i = ids_of($n, 2);
            $n += 2;
            push @{ $ids{$path} }, @i;
            push @reqs, post_req($path, ids_body(@i));
        }
    }

    my @r = $t->parallel_requests(\@reqs, timeout => 10 * $SLOW);
    is(scalar(grep { $_->{status} == 202 } @r), 12, 'mixed: all 202');

    ok(wait_calls('publish', 1) && wait_calls('unpublish', 1)
       && wait_calls('move-to-stage', 2), 'mixed: every action called');
    Time::HiRes::sleep(0.5 * $SLOW);

    my %got;
    for my $action (qw(publish unpublish move-to-stage)) {
        for my $c (calls_of($action)) {
            my $d = body_of($c)->{data};
            my $path = $action eq 'move-to-stage'
                     ? '/' . $d->{attributes}{stage} : "/$action";
            push @{ $got{$path} }, @{ $c->{ids} };
        }
    }

    for my $path (sort keys %ids) {
        is_deeply([sort @{ $got{$path} // [] }], [sort @{ $ids{$path} }],
                  "mixed: $path\'s records, and only they, in its calls");
    }

    is(scalar(calls_of('unpublish')), 1, 'mixed: unpublish in one batch');
    is(scalar(calls_of('move-to-stage')), 2,
       'mixed: one batch per stage');
    $t->mock_reset;
}

###########################################################################
# at most 200 records per call, as for publish

{
    my @i = ids_of(5000, 450);
    my $r = $t->post_json('/unpublish', ids_body(@i), timeout => 10 * $SLOW);
    is($r->{status}, 202, '450 records: 202');
    ok(wait_calls('unpublish', 3), '450 records: 3 calls');
    my @c = calls_of('unpublish');
    is_deeply([map { scalar @{ $_->{ids} } } @c], [200, 200, 50],
              '450 records: 200, 200 and 50');
    $t->mock_reset;
}

###########################################################################
# a refused record is split out, answered 502 and logged by its action

{
    my @i = ids_of(7000, 8);
    my $bad = $i[5];
    $t->mock_config({ refuse_ids => { $bad => { status => 422,
                                               code => 'INVALID_FIELD' } } });
    my $mark = $t->log_mark;
    my $r = $t->post_json('/review', ids_body(@i), timeout => 10 * $SLOW);
    is($r->{status}, 502, 'refused: 502');
    is_deeply($r->{json}{meta}{refused}, [$bad], 'refused: names the record');

    my %sent = map { $_ => 1 } map { @{ $_->{ids} } } calls_of('move-to-stage');
    is(scalar(grep { $sent{$_} } @i), 7, 'refused: the 7 others are moved');
    ok(!$sent{$bad}, 'refused: not the refused one');
    ok($t->wait_for_log(qr/\[error\].*gave up moving 1 record to stage "review".*\Q$bad\E/,
                        3 * $SLOW, $mark),
       'refused: "gave up moving ... to stage" at error, by ID');
    $t->mock_reset;

    @i = ids_of(7100, 2);
    $t->mock_faults({ status => 422, code => 'INVALID_FIELD' });
    $mark = $t->log_mark;
    $r = $t->post_json('/unpublish', ids_body($i[0]), timeout => 10 * $SLOW);
    is($r->{status}, 502, 'refused unpublish: 502');
    ok($t->wait_for_log(qr/\[error\].*gave up unpublishing 1 record.*\Q$i[0]\E/,
                        3 * $SLOW, $mark),
       'refused unpublish: "gave up unpublishing" at error');
    $t->mock_reset;
}

###########################################################################
# DatoCMS webhooks: each action's default events

{
    my ($a, $b, $c) = ids_of(8000, 3);

    my $r = $t->post_json('/unpublish', hook($a, event_type => 'update'));
    is($r->{status}, 200, 'unpublish: an update webhook is ignored');
    $r = $t->post_json('/unpublish-on-publish',
                       hook($a, event_type => 'publish'));
    is($r->{status}, 202, 'unpublish: publish, when named, is taken');

    $r = $t->post_json('/review', hook($b, event_type => 'create'));
    is($r->{status}, 202, 'move to stage: a create webhook is taken');
    $r = $t->post_json('/review', hook($c, event_type => 'update'));
    is($r->{status}, 200, 'move to stage: an update webhook is ignored');
    $t->mock_reset;
}

###########################################################################
# the status page and the variables name the action

{
    my $s = $t->json_request(method => 'GET', path => '/status')->{json};
    ok(($s->{actions}{unpublish}{records}{sent} // 0) >= 450,
       'status: records sent, by action: unpublish');
    ok(($s->{actions}{'move-to-stage'}{records}{sent} // 0) >= 7,
       'status: records sent, by action: move-to-stage');
    ok(($s->{actions}{'move-to-stage'}{records}{given_up} // 0) >= 1,
       'status: records given up, by action: move-to-stage');

    my $p = $t->request(method => 'GET',
                        path => '/status?format=prometheus')->{body} // '';
    like($p, qr/^dato_action_records_total\{action="unpublish",state="sent"\} \d+$/m,
         'metrics: an action label');
    like($p, qr/^dato_api_calls_total\{call="move_to_stage",/m,
         'metrics: calls by action');

    my $log = $t->read_file('actions.log') // '';
    like($log, qr{^/unpublish unpublish 2$}m, '$dato_action: unpublish');
    like($log, qr{^/review move-to-stage 3$}m, '$dato_action: move-to-stage');
    like($log, qr{^/publish publish 2$}m, '$dato_action: publish');
}

$t->done;

done_testing;
