#!/usr/bin/perl

# Lifecycle (issue 3, "Reload and shutdown" and "Back-pressure"): reload and
# graceful quit while batches are queued or calls are in flight,
# worker_shutdown_timeout, fast stop, a full queue, the shared rate-limit
# zone across a reload, and reloads under a trickle of webhooks with two
# workers.  In every scenario, each id whose webhook was answered 2xx
# reached the mock in a call answered 202, or is named in a "gave up
# publishing" error.log line.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use IO::Socket::INET;
use Socket qw(PF_INET SOCK_STREAM pack_sockaddr_in unpack_sockaddr_in inet_aton);
use DatoTest qw(ids_of hook json_headers);

###########################################################################
# helpers

# one webhook per id to $path, one after the other: the ids answered 202
sub hooks_accepted {
    my ($tt, $path, @ids) = @_;
    return grep { $tt->post_json($path, hook($_))->{status} == 202 } @ids;
}

sub timed(&) {
    my ($cb) = @_;
    my $t0 = Time::HiRes::time();
    my @r = $cb->();
    return (Time::HiRes::time() - $t0, @r);
}

my $t;

###########################################################################
# 1. reload while batches are queued in a 3 s window: the old worker sends
#    them at once and exits; webhooks after the reload work too

{
    $t = DatoTest->with_mock(workers => 1, server => <<'EOF');
        location /hook {
            dato_publish;
            dato_batch_window 3s;
            dato_publish_wait none;
        }
        location /fast {
            dato_publish;
            dato_batch_window 100ms;
            dato_publish_wait none;
        }
EOF

    my @ids = ids_of(1000, 20);
    my (@acc, @bad);
    my $first = Time::HiRes::time();
    for my $id (@ids) {
        my $r = $t->post_json('/hook', hook($id));
        if ($r->{status} == 202) { push @acc, $id } else { push @bad, $r }
    }
    is(scalar @acc, 20, 'reload/queued: 20 webhooks answered 202')
        or diag join "\n", map { "$_->{status} " . ($_->{body} // $_->{error} // '') } @bad;
    is(scalar($t->publishes), 0, 'reload/queued: nothing sent before the window ends');

    my $mark = $t->log_mark;
    my $hup = Time::HiRes::time();
    ok($t->reload, 'reload/queued: reload done');
    ok($t->wait_published(2, @acc),
       'reload/queued: the old worker sent all 20 within 2 s of the reload');
    my @calls = $t->calls_for(@acc);
    my $last = 0;
    $last = $_->{t} > $last ? $_->{t} : $last for @calls;
    ok(@calls && $last - $first < 2.8,
       sprintf('reload/queued: sent %.2f s after the first webhook, before the 3 s window',
               $last - $first));
    ok($t->wait_for_log(qr/worker process \d+ exited with code 0/, 3, $mark),
       'reload/queued: the old worker exited');

    # after the reload
    my @new = ids_of(1100, 3);
    my @acc2;
    for my $k (0 .. 1) {
        my $r = $t->post_json('/fast', hook($new[$k]));
        is($r->{status}, 202, "reload/queued: webhook $k to the new worker: 202");
        push @acc2, $new[$k] if $r->{status} == 202;
    }
    ok($t->wait_published(2, @acc2), 'reload/queued: new worker publishes');
    my $r = $t->post_json('/hook', hook($new[2]));
    is($r->{status}, 202, 'reload/queued: webhook to the 3 s window after the reload: 202');
    push @acc2, $new[2] if $r->{status} == 202;

    # a graceful quit sends the last one at once
    my ($dt) = timed { $t->stop };
    ok($dt < 2.5, sprintf('reload/queued: quit took %.2f s', $dt));
    $t->promise_ok('reload/queued', @acc, @acc2);
    is(scalar($t->published(@acc, @acc2)), scalar(@acc) + scalar(@acc2),
       'reload/queued: every id was published');
    is(scalar($t->gave_up_lines), 0, 'reload/queued: nothing given up');
    $t->done;
}

###########################################################################
# 2. graceful quit while a call is in flight: nginx waits for the answer

{
    $t = DatoTest->with_mock(workers => 1, server => <<'EOF');
        location /hook {
            dato_publish;
            dato_batch_window 50ms;
            dato_publish_wait none;
        }
        location /job {
            dato_publish;
            dato_batch_window 50ms;
            dato_publish_wait job;
        }
EOF

    $t->mock_faults([ { delay_ms => 2000 }, { delay_ms => 2000 } ]);
    my @acc = hooks_accepted($t, '/hook', ids_of(2000, 5));
    is(scalar @acc, 5, 'quit/in flight: 5 webhooks answered 202');
    # the mock records a call when it decides the answer, before the delay
    ok($t->wait_for(sub { scalar $t->calls_for(@acc) }, 1, 0.02),
       'quit/in flight: the call is out');

    # a webhook that waits for its job while the worker exits
    my $jid = DatoTest::uuid_id(2100);
    my $sock = $t->raw_send('/job', hook($jid));
    ok($t->wait_for(sub { scalar $t->calls_for($jid) }, 1, 0.02),
       'quit/in flight: the waiting webhook\'s call is out');
    Time::HiRes::sleep(0.1);

    # QUIT, read the waiting webhook's answer meanwhile (a client that does
    # not close would hold nginx in lingering close), then wait for the exit
    my $mark = $t->log_mark;
    my ($dt, $jr) = timed {
        kill 'QUIT', $t->pid;
        my $jr = $t->raw_read($sock, 5);
        $t->stop(timeout => 10);
        $jr;
    };
    is($jr->{status}, 202, 'quit/in flight: the waiting webhook was answered 202')
        or diag $jr->{raw} // $jr->{error};
    is($jr->{json} && $jr->{json}{meta}{status}, 'accepted',
       'quit/in flight: the waiting webhook got its job ("accepted")');
    push @acc, $jid if $jr->{status} == 202;
    ok($dt < 5, sprintf('quit/in flight: nginx exited in %.2f s', $dt));
    ok($dt > 1.0, sprintf('quit/in flight: nginx waited for the delayed answer (%.2f s)', $dt));
    my @calls = $t->calls_for(@acc);
    ok(@calls >= 1 && !grep({ $_->{status} != 202 } @calls),
       'quit/in flight: the mock answered 202');
    is(scalar($t->published(@acc)), scalar(@acc), 'quit/in flight: all ids published');
    like($t->error_log_since($mark), qr/dato: \d+ records? sent, job "\d+"/,
         'quit/in flight: the exiting worker got the answer');
    is(scalar($t->gave_up_lines), 0, 'quit/in flight: nothing given up')
        or diag join "\n", $t->gave_up_lines;
    $t->promise_ok('quit/in flight', @acc);
    $t->done;
}

###########################################################################
# 3. graceful quit while a batch waits in its 5 s window: sent at once

{
    $t = DatoTest->with_mock(workers => 1, server => <<'EOF');
        location /hook {
            dato_publish;
            dato_batch_window 5s;
            dato_publish_wait none;
        }
EOF

    my @acc = hooks_accepted($t, '/hook', ids_of(3000, 8));
    is(scalar @acc, 8, 'quit/queued: 8 webhooks answered 202');
    is(scalar($t->publishes), 0, 'quit/queued: nothing sent yet');

    # a webhook whose body is still being read when the worker starts to
    # exit: queued and sent at once too
    my $late = DatoTest::uuid_id(3100);
    my $body = hook($late);
    my $req = $t->_build_request({ method => 'POST', path => '/hook', body => $body,
                                   headers => json_headers() });
    my $half = length($req) - int(length($body) / 2);
    my $sock = $t->raw_connect;
    syswrite($sock, substr($req, 0, $half));
    Time::HiRes::sleep(0.1);

    my ($dt, $lr) = timed {
        kill 'QUIT', $t->pid;
        Time::HiRes::sleep(0.2);
        syswrite($sock, substr($req, $half));
        my $lr = $t->raw_read($sock, 3);
        $t->stop(timeout => 10);
        $lr;
    };
    ok($dt < 3, sprintf('quit/queued: nginx exited in %.2f s', $dt));
    is(scalar($t->published(@acc)), 8, 'quit/queued: all 8 ids published on quit');
    is($lr->{status}, 202, 'quit/queued: webhook completed during the exit: 202')
        or diag $lr->{raw} // $lr->{error};
    if ($lr->{status} == 202) {
        push @acc, $late;
        is(scalar($t->published($late)), 1,
           'quit/queued: the webhook completed during the exit was published');
    }
    is(scalar($t->gave_up_lines), 0, 'quit/queued: nothing given up');
    $t->promise_ok('quit/queued', @acc);
    $t->done;
}

###########################################################################
# 4. worker_shutdown_timeout: slow calls are given up, with their ids

{
    $t = DatoTest->with_mock(workers => 1, main => 'worker_shutdown_timeout 1s;',
                            server => <<'EOF');
        location /a {
            dato_publish;
            dato_batch_window 50ms;
            dato_publish_wait none;
        }
        location /b {
            dato_publish;
            dato_batch_window 50ms;
            dato_publish_wait none;
        }
        location /c {
            dato_publish;
            dato_batch_window 5s;
            dato_publish_wait none;
        }
        location /j {
            dato_publish;
            dato_batch_window 50ms;
            dato_publish_wait job;
        }
EOF

    # /a: a call that takes 6 s; /b: a 503, then slow retries;
    # /c: a batch in its window at quit, sent at once into a slow call;
    # /j: a webhook that waits for its job
    $t->mock_faults([ { delay_ms => 6000 }, { status => 503 },
                      map { { delay_ms => 6000 } } 1 .. 8 ]);
    my @a = ids_of(4000, 3);
    my @b = ids_of(4100, 3);
    my @c = ids_of(4200, 3);
    my @acc;
    my $r = $t->post_json('/a', { ids => \@a });
    is($r->{status}, 202, 'shutdown timeout: /a 202');
    push @acc, @a if $r->{status} == 202;
    ok($t->wait_for(sub { scalar $t->calls_for(@a) }, 1, 0.02), 'shutdown timeout: /a call out');
    $r = $t->post_json('/b', { ids => \@b });
    is($r->{status}, 202, 'shutdown timeout: /b 202');
    push @acc, @b if $r->{status} == 202;
    ok($t->wait_for(sub { scalar $t->calls_for(@b) }, 1, 0.02), 'shutdown timeout: /b call out');
    $r = $t->post_json('/c', { ids => \@c });
    is($r->{status}, 202, 'shutdown timeout: /c 202');
    push @acc, @c if $r->{status} == 202;
    my @j = ids_of(4300, 2);
    my $sock = $t->raw_send('/j', { ids => \@j });
    ok($t->wait_for(sub { scalar $t->calls_for(@j) }, 1, 0.02), 'shutdown timeout: /j call out');
    Time::HiRes::sleep(0.1);

    my $mark = $t->log_mark;
    my ($dt, $jr) = timed {
        kill 'QUIT', $t->pid;
        my $jr = $t->raw_read($sock, 5);
        $t->stop(timeout => 10);
        $jr;
    };
    ok($dt < 3, sprintf('shutdown timeout: nginx exited in %.2f s', $dt));
    is($jr->{status}, 503, 'shutdown timeout: the waiting webhook is told to retry (503)')
        or diag $jr->{raw};
    like($jr->{headers}{'retry-after'} // '', qr/^\d+$/,
         'shutdown timeout: ... with Retry-After');
    note 'shutdown timeout: the waiting webhook got: '
         . ($jr->{status} || $jr->{error} // '?') . ' ' . ($jr->{body} // '');
    push @acc, @j if $jr->{status} >= 200 && $jr->{status} < 300;

    # nginx never saw an answer for any of them: all are given up
    my $gave = $t->gave_up_ids;
    my %u;
    my @missing = grep { !$u{$_}++ && !$gave->{$_} } @acc, @j;
    ok(!@missing, 'shutdown timeout: every id is named in a "gave up publishing" line')
        or diag "not named: @missing\n" . join("\n", $t->gave_up_lines);
    # the calls were cut short by worker_shutdown_timeout, and the lines
    # say so (the reason is what tells an operator to raise it), also for
    # the batches whose calls were in flight
    my @lines = grep { /gave up publishing/ } split /\n/, $t->error_log_since($mark);
    my @other = grep { !/worker_shutdown_timeout/ } @lines;
    ok(@lines && !@other, 'shutdown timeout: the reason given is worker_shutdown_timeout')
        or diag join "\n", @other;
    ok(scalar($t->calls_for(@c)) >= 1, 'shutdown timeout: the queued batch was sent on quit');
    $t->promise_ok('shutdown timeout', @acc);
    $t->done;
}

###########################################################################
# 5. fast stop with a queued batch: the dropped ids are logged

{
    $t = DatoTest->with_mock(workers => 1, server => <<'EOF');
        location /hook {
            dato_publish;
            dato_batch_window 5s;
            dato_publish_wait none;
        }
        location /j {
            dato_publish;
            dato_batch_window 5s;
            dato_publish_wait job;
        }
        location /fly {
            dato_publish;
            dato_batch_window 50ms;
            dato_publish_wait none;
        }
EOF

    # a call in flight at the fast stop: its answer never comes
    $t->mock_faults({ delay_ms => 3000 });
    my @fly = ids_of(5300, 2);
    my $fr = $t->post_json('/fly', { ids => \@fly });
    is($fr->{status}, 202, 'fast stop: /fly 202');
    ok($t->wait_for(sub { scalar $t->calls_for(@fly) }, 1, 0.02), 'fast stop: /fly call out');

    my @acc = hooks_accepted($t, '/hook', ids_of(5000, 4));
    my $r = $t->post_json('/hook', { ids => [ ids_of(5100, 3) ] });
    push @acc, ids_of(5100, 3) if $r->{status} == 202;
    is(scalar @acc, 7, 'fast stop: 7 ids answered 202');
    my @j = ids_of(5200, 2);
    my $sock = $t->raw_send('/j', { ids => \@j });
    Time::HiRes::sleep(0.2);

    my ($dt) = timed { $t->stop_fast };
    my $jr = $t->raw_read($sock, 1);
    push @acc, @j if $jr->{status} >= 200 && $jr->{status} < 300;
    ok($dt < 3, sprintf('fast stop: nginx exited in %.2f s', $dt));
    is(scalar($t->calls_for(@acc)), 0, 'fast stop: nothing queued was sent');
    push @acc, @fly if $fr->{status} == 202;
    my $gave = $t->gave_up_ids;
    my @missing = grep { !$gave->{$_} } @acc, @j;
    ok(!@missing, 'fast stop: every queued or in-flight id is named in a '
                  . '"gave up publishing" line')
        or diag "not named: @missing\n" . join("\n", $t->gave_up_lines);
    $t->promise_ok('fast stop', @acc);
    $t->done;
}

###########################################################################
# 5b. fast stop while calls are still connecting: an API whose accept
#     queue is full leaves curl's sockets in connect; libcurl 7.88 closes
#     such sockets without the close callback, and nginx must not touch
#     them again (no "epoll_ctl() failed" alert), and their ids are named

{
    # backlog 0: one connection fills the queue, later SYNs are dropped
    socket(my $full, PF_INET, SOCK_STREAM, 0) or die "socket: $!\n";
    bind($full, pack_sockaddr_in(0, inet_aton('127.0.0.1'))) or die "bind: $!\n";
    listen($full, 0) or die "listen: $!\n";
    my ($port) = unpack_sockaddr_in(getsockname($full));
    my @fillers = grep { defined }
        map { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                    Proto => 'tcp', Blocking => 0) } 1 .. 3;
    Time::HiRes::sleep(0.2);

    $t = DatoTest->new(workers => 1);
    $t->run(http => <<"EOF");
    dato_api_url http://127.0.0.1:$port;
    dato_api_token test-token;

    server {
        listen 127.0.0.1:%%PORT%%;
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 1;
            dato_batch_window 10ms;
        }
    }
EOF

    my @ids = ids_of(5400, 3);
    my @acc = hooks_accepted($t, '/hook', @ids);
    is(scalar @acc, 3, 'connecting: 3 webhooks answered 202');
    Time::HiRes::sleep(0.5);

    my ($dt) = timed { $t->stop_fast };
    ok($dt < 3, sprintf('connecting: nginx exited in %.2f s', $dt));
    my $gave = $t->gave_up_ids;
    my @missing = grep { !$gave->{$_} } @acc;
    ok(!@missing, 'connecting: every id is named in a "gave up publishing" line')
        or diag "not named: @missing";
    $t->done;
    close $_ for @fillers;
    close $full;
}

###########################################################################
# 6. a full queue: 503 + Retry-After, nothing of the webhook queued

{
    $t = DatoTest->with_mock(workers => 1, api_http => 'dato_queue_size 10;',
                            server => <<'EOF');
        location /hook {
            dato_publish;
            dato_batch_window 5s;
            dato_publish_wait none;
        }
EOF

    my (@acc, @refused);

    my @six = ids_of(6000, 6);
    my $r = $t->post_json('/hook', { ids => \@six });
    is($r->{status}, 202, 'queue full: 6 ids: 202') or diag $r->{raw};
    push @acc, @six if $r->{status} == 202;

    my @five = ids_of(6100, 5);
    $r = $t->post_json('/hook', { ids => \@five });
    is($r->{status}, 503, 'queue full: 5 more ids (11 > 10): 503') or diag $r->{raw};
    push @acc, @five if $r->{status} == 202;
    push @refused, @five unless $r->{status} == 202;
    like($r->{headers}{'retry-after'} // '', qr/^[1-9]\d*$/,
         'queue full: Retry-After with a number of seconds');
    like($r->{headers}{'content-type'} // '', qr{^application/json\b},
         'queue full: JSON content type');
    my $e = ref $r->{json} eq 'HASH' && ref $r->{json}{errors} eq 'ARRAY'
            ? $r->{json}{errors}[0] : undef;
    ok(ref $e eq 'HASH' && ($e->{status} // '') eq '503'
       && ($e->{title} // '') =~ /\S/ && ($e->{detail} // '') =~ /\S/,
       'queue full: {"errors":[{"status":"503",title,detail}]}') or diag $r->{body};

    # more than the queue can ever hold: 413, not a 503 retried forever
    my @eleven = ids_of(6500, 11);
    $r = $t->post_json('/hook', { ids => \@eleven });
    is($r->{status}, 413, 'queue full: 11 ids with dato_queue_size 10: 413')
        or diag $r->{raw};
    push @refused, @eleven unless $r->{status} == 202;
    ok(!defined $r->{headers}{'retry-after'}, 'queue full: 413 without Retry-After');
    is($r->{body}, '{"errors":[{"status":"413","title":"too many records",'
                   . '"detail":"11 records, more than the 10 that the publish'
                   . ' queue can hold"}]}' . "\n",
       'queue full: the 413 names the records and dato_queue_size');

    my @four = ids_of(6200, 4);
    $r = $t->post_json('/hook', { ids => \@four });
    is($r->{status}, 202, 'queue full: 4 ids (6 + 4 = 10): 202') or diag $r->{raw};
    push @acc, @four if $r->{status} == 202;

    my @one = ids_of(6300, 1);
    $r = $t->post_json('/hook', hook($one[0]));
    is($r->{status}, 503, 'queue full: one more id at 10 of 10: 503') or diag $r->{raw};
    push @acc, @one if $r->{status} == 202;
    push @refused, @one unless $r->{status} == 202;

    # the window ends, the batch of 10 goes out: room again
    ok($t->wait_published(7, @six, @four), 'queue full: the batch of 10 was published');
    ok($t->wait_for_log(qr/dato: 10 records sent/, 2), 'queue full: nginx got the answer');
    my @ten = ids_of(6400, 10);
    $r = $t->post_json('/hook', { ids => \@ten });
    is($r->{status}, 202, 'queue full: after the batch was sent, 10 ids: 202') or diag $r->{raw};
    push @acc, @ten if $r->{status} == 202;

    $t->stop(timeout => 10);
    my %refused = map { $_ => 1 } @refused;
    my @leaked = grep { $refused{$_} } map { @{ $_->{ids} || [] } } $t->publishes;
    is(scalar @leaked, 0, 'queue full: no refused id ever reached the mock') or diag "@leaked";
    $t->promise_ok('queue full', @acc);
    $t->done;
}

###########################################################################
# 7. the shared zone survives a reload: rate limit 3 per 4 s across it
#    ($t reloads, $c is the control without reload; both run side by side)

{
    my $loc = <<'EOF';
        location /hook {
            dato_publish;
            dato_rate_limit 3 4s;
            dato_batch_size 1;
            dato_batch_window 10ms;
            dato_publish_wait none;

            # job polls draw from the same call log: here only publishes
            dato_job_poll off;
        }
EOF
    $t = DatoTest->with_mock(workers => 1, server => $loc);
    my $c = DatoTest->with_mock(workers => 1, server => $loc);
    my %acc = ($t => [], $c => []);
    my @first = ids_of(7000, 3);
    my @second = ids_of(7100, 3);

    for my $tt ($t, $c) {
        push @{ $acc{$tt} }, hooks_accepted($tt, '/hook', @first);
    }
    for my $tt ($t, $c) {
        my $n = $tt == $t ? 'reload' : 'control';
        ok($tt->wait_for(sub { $tt->publishes >= 3 }, 2, 0.02),
           "rate/$n: 3 calls at once");
    }
    my $rmark = $t->log_mark;
    ok($t->reload, 'rate/reload: reload done');
    for my $tt ($t, $c) {
        push @{ $acc{$tt} }, hooks_accepted($tt, '/hook', @second);
    }
    for my $tt ($t, $c) {
        my $n = $tt == $t ? 'reload' : 'control';
        is(scalar @{ $acc{$tt} }, 6, "rate/$n: 6 webhooks answered 202");
        ok($tt->wait_published(7, @first, @second), "rate/$n: all 6 published");
        my @ts = map { $_->{t} } $tt->publishes;
        is(scalar @ts, 6, "rate/$n: 6 calls");
        my @gaps = map { $ts[$_ + 3] - $ts[$_] } grep { defined $ts[$_ + 3] } 0 .. 2;
        ok(@gaps == 3 && !grep({ $_ < 3.5 } @gaps),
           "rate/$n: the 4th to 6th calls came >= 3.5 s after the 1st to 3rd")
            or diag 'gaps: ' . join ' ', map { sprintf '%.2f', $_ } @gaps;
        my @calls = $tt->publishes;
        is(scalar(grep { $_->{status} == 429 } @calls), 0, "rate/$n: no 429");
    }
    ok($t->wait_for_log(qr/worker process \d+ exited with code 0/, 0.1, $rmark),
       'rate/reload: the old worker (idle API connections only) exited at once');
    $c->promise_ok('rate/control', @{ $acc{$c} });
    $c->done;
    $t->promise_ok('rate/reload', @{ $acc{$t} });
    $t->done;
}

###########################################################################
# 8. two workers, two reloads under a trickle of webhooks

{
    $t = DatoTest->with_mock(workers => 2, server => <<'EOF');
        location /hook {
            dato_publish;
            dato_batch_window 200ms;
            dato_publish_wait none;
        }
EOF

    my $mark = $t->log_mark;
    my @ids = ids_of(8000, 40);
    my (@acc, %status);
    my $start = Time::HiRes::time();
    for my $k (0 .. $#ids) {
        kill 'HUP', $t->pid if $k == 10 || $k == 25;
        my $r = $t->post_json('/hook', hook($ids[$k]), timeout => 5);
        $status{ $r->{status} }++;
        push @acc, $ids[$k] if $r->{status} >= 200 && $r->{status} < 300;
        my $next = $start + ($k + 1) * 0.05;
        my $now = Time::HiRes::time();
        Time::HiRes::sleep($next - $now) if $next > $now;
    }
    ok(@acc >= 35, 'trickle: ' . scalar(@acc) . ' of 40 webhooks answered 2xx')
        or diag explain \%status;
    ok($t->wait_for(sub {
           my $n = () = $t->error_log_since($mark) =~ /gracefully shutting down/g;
           $n >= 4 }, 5), 'trickle: two reloads, 2 old workers each');
    ok($t->wait_published(4, @acc), 'trickle: all accepted ids published');
    $t->stop(timeout => 10);
    $t->promise_ok('trickle', @acc);
}

$t->done;
done_testing;
