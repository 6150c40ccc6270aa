package Dato::Mock;

# The mock DatoCMS API (t/mock/dato_mock.pl) as the tests drive it:
# starting and stopping it, its control calls (/__mock/*), and what
# reached it.  Methods of the harness object (DatoTest), and functions
# over the mock's records (hashes with t, method, path, status, ids, job,
# headers, body).
#
#   DatoTest->with_mock(%a)   a harness with the mock started and nginx
#                          running (see below): the preamble of most tests
#   $t->start_mock(@args)  the mock's options (--limit, --token ...): its
#                          port.  A second mock on another loopback
#                          address: another harness object, used for its
#                          mock only, with start_mock('--host',
#                          '127.0.0.2', '--port', $p); its control calls
#                          and mock_url() then use that address.
#   $t->mock_url, $t->mock_port, $t->stop_mock
#   $t->mock_faults($f), $t->mock_config($c), $t->mock_reset,
#   $t->mock_requests, $t->mock_jobs (the job table: hashes with id, ids,
#   fail_ids, items, polls, seen, failed, successful, status, code),
#   $t->mock_stats
#   $t->publishes          the POST /items/bulk/publish records, oldest first
#   $t->calls_for(@ids)    those that carry at least one of @ids
#   $t->published(@ids)    the ids among @ids in a call answered 202
#   $t->wait_published($timeout, @ids)  until all of @ids are published
#   published_ids(@calls)  { id => n } over the records answered 202
#   max_in_window($w, @calls)  the most records within any $w seconds

use strict;
use warnings;

use Exporter 'import';
use Dato::Process qw(start_ready stop_pid);
use Dato::Payload qw(encode_json decode_json json_headers);
use Dato::Nginx qw(api_conf);

our @EXPORT_OK = qw(published_ids max_in_window);

# A harness object with the mock started and nginx running: the preamble
# of most tests.
#
#   workers, log_level ...  as for new()
#   mock => [...]          start_mock()'s arguments
#   main => '...'          main-level configuration
#   http => '...'          the whole http{} text; without it api_conf()'s,
#                          from server, api_http (its http), token, listen
sub with_mock {
    my ($class, %a) = @_;
    my %new = map { $_ => delete $a{$_} }
              grep { exists $a{$_} }
              qw(workers log_level master valgrind no_module nginx module);
    my $t = $class->new(%new);
    $t->start_mock(@{ $a{mock} || [] });
    my $http = $a{http} // api_conf(
        server => $a{server}, http => $a{api_http}, token => $a{token},
        listen => $a{listen});
    $t->run(main => $a{main}, http => $http);
    return $t;
}

sub start_mock {
    my ($self, @args) = @_;
    die "mock already running\n" if $self->{mock_pid};
    die "mock script $self->{mock_script} not found\n"
        unless -f $self->{mock_script};
    my $tmp = $self->{tmp};
    my %arg = @args % 2 ? () : @args;
    $self->{mock_host} = $arg{'--host'} // '127.0.0.1';
    my @port = grep({ $_ eq '--port' } @args) ? () : ('--port', '0');
    ($self->{mock_pid}, $self->{mock_port}) = start_ready('mock',
        [ $^X, $self->{mock_script}, @port, '--log', "$tmp/mock.log", @args ],
        "$tmp/mock.out", "$tmp/mock.err");
    return $self->{mock_port};
}

sub mock_port { $_[0]{mock_port} }

sub mock_url {
    my ($self) = @_;
    die "mock not started\n" unless $self->{mock_port};
    return "http://$self->{mock_host}:$self->{mock_port}";
}

sub _mock_call {
    my ($self, $method, $path, $data) = @_;
    die "mock not started\n" unless $self->{mock_port};
    my %req = (method => $method, path => $path, port => $self->{mock_port},
               addr => $self->{mock_host}, timeout => 10);
    if (defined $data) {
        $req{body} = encode_json($data);
        $req{headers} = json_headers();
    }
    my $r = $self->request(%req);
    die "mock $method $path failed: "
        . ($r->{status} ? "status $r->{status}: $r->{body}" : $r->{error}) . "\n"
        unless $r->{status} >= 200 && $r->{status} < 300;
    return $r;
}

sub _decode_or_die {
    my ($body, $what) = @_;
    my $d = eval { decode_json($body) };
    die "cannot decode $what: $@\n" unless defined $d || $body =~ /^\s*null\s*$/;
    return $d;
}

sub mock_faults {
    my ($self, $faults) = @_;
    $faults = [$faults] if ref $faults eq 'HASH';
    $self->_mock_call('POST', '/__mock/faults', $faults);
    return 1;
}

sub mock_config {
    my ($self, $cfg) = @_;
    $self->_mock_call('POST', '/__mock/config', $cfg);
    return 1;
}

# the array a GET of /__mock/$what answers, as a list
sub _mock_list {
    my ($self, $what) = @_;
    my $r = $self->_mock_call('GET', "/__mock/$what");
    my $d = _decode_or_die($r->{body}, "mock $what");
    return ref $d eq 'ARRAY' ? @$d : ();
}

sub mock_requests { $_[0]->_mock_list('requests') }

sub mock_reset {
    my ($self) = @_;
    $self->_mock_call('POST', '/__mock/reset', {});
    return 1;
}

sub mock_jobs { $_[0]->_mock_list('jobs') }

sub mock_stats {
    my ($self) = @_;
    my $r = $self->_mock_call('GET', '/__mock/stats');
    return _decode_or_die($r->{body}, 'mock stats');
}

sub stop_mock {
    my ($self) = @_;
    my $pid = delete $self->{mock_pid} or return;
    return stop_pid($pid);
}


# the mock's bulk publish calls (POST /items/bulk/publish), oldest first
sub publishes {
    my ($self) = @_;
    my @c = sort { $a->{t} <=> $b->{t} }
            grep { $_->{method} eq 'POST'
                   && $_->{path} =~ m{^/items/bulk/publish(?:\?|\z)} }
            $self->mock_requests;
    return @c;
}

# the bulk publish calls that carry at least one of @ids, oldest first
sub calls_for {
    my ($self, @ids) = @_;
    my %want = map { $_ => 1 } @ids;
    my @c = grep { grep { $want{$_} } @{ $_->{ids} || [] } } $self->publishes;
    return @c;
}

# { id => number of calls } over those of @calls (mock records) that the
# mock answered 202
sub published_ids {
    my (@calls) = @_;
    my %ids;
    for my $c (@calls) {
        next unless $c->{status} == 202;
        $ids{$_}++ for @{ $c->{ids} || [] };
    }
    return \%ids;
}

# the ids among @ids that were part of a call the mock answered 202
sub published {
    my ($self, @ids) = @_;
    my $got = published_ids($self->calls_for(@ids));
    return grep { $got->{$_} } @ids;
}

# wait (up to $timeout s) until every one of @ids is published
sub wait_published {
    my ($self, $timeout, @ids) = @_;
    return $self->wait_for(sub { $self->published(@ids) == @ids }, $timeout, 0.05);
}


# the most of @calls (mock records) that landed within any $w seconds
sub max_in_window {
    my ($w, @calls) = @_;
    my @t = sort { $a <=> $b } map { $_->{t} } @calls;
    my $max = 0;
    my $j = 0;
    for my $i (0 .. $#t) {
        $j++ while $t[$i] - $t[$j] >= $w;
        $max = $i - $j + 1 if $i - $j + 1 > $max;
    }
    return $max;
}

# POST $body (data is encoded) with Content-Type: application/json;
# %a adds or overrides request() arguments; the answer as json_request()

1;
