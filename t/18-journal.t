#!/usr/bin/perl

# A worker's death loses nothing: the batches that hold records answered
# 2xx and not yet accepted by DatoCMS live in the shared zone's journal,
# and the worker that the master starts in a dead one's place (or any
# other live worker) takes them over and sends them.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of ids_body post_req);

my $SLOW = $ENV{TEST_NGINX_USE_VALGRIND} ? 4 : 1;

sub queued {
    my ($t) = @_;
    my $r = $t->json_request(method => 'GET', path => '/status');
    return (($r->{json} || {})->{records} || {})->{queued};
}

###########################################################################
# kill -9 of both workers while the API is down: their 150 records are
# taken over by the respawned workers and published when the API is back

{
    my $t = DatoTest->with_mock(workers => 2, listen => 'reuseport',
                                server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 20;
            dato_job_poll off;
        }
        location /status { dato_publish_status; }
EOF
    $t->allow_log(qr/worker process \d+ exited on signal 9/);

    # the API refuses connections for 6 s: every call fails and waits
    my $up = Time::HiRes::time() + 6 * $SLOW + 0.5;
    $t->mock_config({ down_ms => 6000 * $SLOW });

    my @ids = ids_of(2_000_000, 150);
    my @reqs = map { post_req('/hook', ids_body(@ids[$_ * 10 .. $_ * 10 + 9])) } 0 .. 14;
    my @res = $t->parallel_requests(\@reqs, timeout => 10 * $SLOW);
    is(scalar(grep { $_->{status} == 202 } @res), 15, 'crash: 15 webhooks of 10 records answered 202');
    is(queued($t), 150, 'crash: records.queued 150 before the kill');

    my @pids = $t->worker_pids;
    is(scalar @pids, 2, 'crash: two workers');
    kill 'KILL', @pids;
    ok($t->wait_for(sub { !grep { kill 0, $_ } @pids }, 5), 'crash: both killed');

    ok($t->wait_for(sub { my @w = $t->worker_pids; @w == 2 && !grep { my $p = $_; grep { $_ == $p } @pids } @w },
                    10 * $SLOW),
       'crash: the master started two new workers');

    # the mock does not answer its own control calls while it is down
    Time::HiRes::sleep($up - Time::HiRes::time()) if $up > Time::HiRes::time();

    ok($t->wait_published(40 * $SLOW, @ids), 'crash: all 150 records published once the API is back');
    is(scalar($t->gave_up_lines), 0, 'crash: nothing given up');
    $t->log_like(qr/\[warn\].*dato: took over \d+ records? of worker process \d+/,
                 'crash: the heirs say what they took over');
    ok($t->wait_for(sub { (queued($t) // -1) == 0 }, 5 * $SLOW), 'crash: records.queued back to 0');

    $t->done;
}

###########################################################################
# a live worker takes over the batches of one that died without an heir
# of its slot (here: one of two workers killed; whichever is first, the
# respawned one or the other, takes them), and a reload keeps the journal

{
    my $t = DatoTest->with_mock(workers => 2, listen => 'reuseport',
                                server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_job_poll off;
        }
        location /status { dato_publish_status; }
EOF
    $t->allow_log(qr/worker process \d+ exited on signal 9/);

    my $up = Time::HiRes::time() + 5 * $SLOW + 0.5;
    $t->mock_config({ down_ms => 5000 * $SLOW });

    my @ids = ids_of(2_100_000, 40);
    my @res = $t->parallel_requests([ map { post_req('/hook', ids_body($_)) } @ids ],
                                    timeout => 10 * $SLOW);
    is(scalar(grep { $_->{status} == 202 } @res), 40, 'one dies: 40 webhooks answered 202');

    my ($victim) = $t->worker_pids;
    kill 'KILL', $victim;
    Time::HiRes::sleep($up - Time::HiRes::time()) if $up > Time::HiRes::time();
    ok($t->wait_published(40 * $SLOW, @ids), 'one dies: all 40 records published');
    is(scalar($t->gave_up_lines), 0, 'one dies: nothing given up');
    ok($t->wait_for(sub { (queued($t) // -1) == 0 }, 5 * $SLOW), 'one dies: records.queued back to 0');

    $t->done;
}

###########################################################################
# batches live in the zone while their jobs are followed: when it fills,
# the oldest followed job gives up its room, and no webhook is refused

{
    my $t = DatoTest->with_mock(workers => 1, mock => ['--job-polls', '-1'],
                                api_http => q{dato_zone_size 256k;},
                                server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait job;
        }
EOF

    # each webhook is a call of its own, whose job never finishes
    my @ids = ids_of(2_200_000, 80);
    my $ok = 0;
    for my $id (@ids) {
        my $r = $t->post_json('/hook', ids_body($id), timeout => 10 * $SLOW);
        $ok++ if $r->{status} == 202;
    }
    is($ok, 80, 'zone full of jobs: 80 webhooks answered 202, none refused');
    ok($t->wait_published(10 * $SLOW, @ids), 'zone full of jobs: all 80 published');
    $t->log_unlike(qr/the shared zone is full/, 'zone full of jobs: no record refused for room');
    $t->log_like(qr/\[info\].*was not followed to its end: its room in the shared zone went to new records/,
                 'zone full of jobs: the oldest jobs gave up their room');

    $t->done;
}

###########################################################################
# the other actions: a dead worker's unpublish and move-to-stage batches
# are taken over as what they were, and their queued gauges come back to 0

{
    my $t = DatoTest->with_mock(workers => 1, server => <<'EOF');
        location /takedown {
            dato_unpublish;
            dato_publish_wait none;
            dato_job_poll off;
        }
        location /review {
            dato_move_to_stage review;
            dato_publish_wait none;
            dato_job_poll off;
        }
        location /status { dato_publish_status; }
EOF
    $t->allow_log(qr/worker process \d+ exited on signal 9/);

    my $up = Time::HiRes::time() + 4 * $SLOW + 0.5;
    $t->mock_config({ down_ms => 4000 * $SLOW });

    my @u = ids_of(2_300_000, 5);
    my @m = ids_of(2_300_100, 5);
    is($t->post_json('/takedown', ids_body(@u))->{status}, 202, 'actions: unpublish 202');
    is($t->post_json('/review', ids_body(@m))->{status}, 202, 'actions: move 202');

    my @pids = $t->worker_pids;
    kill 'KILL', @pids;
    ok($t->wait_for(sub { my @w = $t->worker_pids; @w == 1 && $w[0] != $pids[0] },
                    10 * $SLOW), 'actions: a new worker');
    Time::HiRes::sleep($up - Time::HiRes::time()) if $up > Time::HiRes::time();

    my %want = ((map { $_ => 'unpublish' } @u),
                (map { $_ => 'move-to-stage:review' } @m));
    my %went;
    ok($t->wait_for(sub {
           for my $c (grep { $_->{status} == 202 } $t->mock_requests) {
               next unless $c->{path} =~ m{^/items/bulk/(.*)$};
               my $where = $1;
               my $d = DatoTest::decode_json($c->{body})->{data};
               $where .= ":$d->{attributes}{stage}" if $d->{attributes};
               $went{$_} = $where for @{ $c->{ids} };
           }
           keys %went == 10;
       }, 30 * $SLOW, 0.1), 'actions: all 10 records sent after the crash');
    is_deeply(\%went, \%want, 'actions: each as its own action and stage');

    my $s;
    ok($t->wait_for(sub {
           $s = $t->json_request(method => 'GET', path => '/status')->{json};
           ($s->{actions}{unpublish}{records}{queued} // -1) == 0
           && ($s->{actions}{'move-to-stage'}{records}{queued} // -1) == 0;
       }, 5 * $SLOW), 'actions: queued by action back to 0');
    is($s->{actions}{unpublish}{records}{sent}, 5, 'actions: 5 unpublished');
    is(scalar($t->gave_up_lines), 0, 'actions: nothing given up');

    $t->done;
}

done_testing;
