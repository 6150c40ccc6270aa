package Dato::HTTP;

# The tests' HTTP/1.1 client: requests built byte for byte (chunked bodies,
# missing or doubled headers, raw text), many at once over non-blocking
# sockets, and answers parsed as they arrive.  Methods of the harness
# object (DatoTest); requests go to $t->port unless port (and addr) say
# otherwise.
#
#   $t->request(%a)        one request: method, path, headers (a hash, or
#                          a list of pairs: a header twice; undef drops a
#                          default one), body (data is encoded as JSON),
#                          chunked, chunk_size, raw (the whole request),
#                          port, addr, timeout.  The answer: a hash with
#                          status (0 for none), reason, headers (names in
#                          lower case, repeated ones joined by ", "),
#                          header_list ([name, value] as sent), body, raw,
#                          error, elapsed, sent
#   $t->json_request(%a)   the same, with json (the decoded body)
#   $t->post_json($path, $body, %a)  POST $body as application/json
#   $t->parallel_requests([\%a, ...], timeout => $s)  all at once
#   $t->raw_connect($port) a connected socket
#   $t->raw_send($path, $body)  a JSON POST on a raw socket, left unread
#   $t->raw_read($sock, $timeout)  its answer, as json_request()'s
#   parse_response($raw, $eof, $head)  undef while more is needed
#   add_json($r)           $r with json, the decoded body
#
# The answers are parsed here, not by HTTP::Response->parse: that takes one
# whole message and knows neither where it ends (Content-Length, chunked,
# the connection's close) nor chunked coding, interim 1xx answers, or the
# order headers came in, and the client needs all four.

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Time::HiRes ();
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use Exporter 'import';
use Dato::Payload qw(encode_json decode_json json_headers);

our @EXPORT_OK = qw(parse_response add_json);

sub _min { $_[0] < $_[1] ? $_[0] : $_[1] }

sub _build_request {
    my ($self, $a) = @_;
    return $a->{raw} if defined $a->{raw};

    my $body = $a->{body};
    $body = encode_json($body) if ref $body;
    utf8::encode($body) if defined $body && utf8::is_utf8($body);

    my $method = $a->{method} // (defined $body ? 'POST' : 'GET');
    my $path = $a->{path} // '/';
    my $port = $a->{port} // $self->port;

    my @h;
    my $hh = $a->{headers} // {};
    if (ref $hh eq 'HASH') {
        push @h, [$_, $hh->{$_}] for sort keys %$hh;
    } else {
        my @l = @$hh;
        push @h, [splice(@l, 0, 2)] while @l;
    }
    my %has = map { lc $_->[0] => 1 } @h;
    @h = grep { defined $_->[1] } @h;       # undef value: suppress a header

    unshift @h, ['Host', "127.0.0.1:$port"] unless $has{host};
    push @h, ['Connection', 'close'] unless $has{connection};

    my $payload = '';
    if (defined $body) {
        if ($a->{chunked}) {
            push @h, ['Transfer-Encoding', 'chunked'] unless $has{'transfer-encoding'};
            my $cs = $a->{chunk_size} || 1000;
            for (my $o = 0; $o < length $body; $o += $cs) {
                my $c = substr($body, $o, $cs);
                $payload .= sprintf("%x\r\n", length $c) . $c . "\r\n";
            }
            $payload .= "0\r\n\r\n";
        } else {
            push @h, ['Content-Length', length $body] unless $has{'content-length'};
            $payload = $body;
        }
    }

    return "$method $path HTTP/1.1\r\n"
         . join('', map { "$_->[0]: $_->[1]\r\n" } @h)
         . "\r\n" . $payload;
}

# returns undef if more data is needed (and !$eof), else a result hash
sub parse_response {
    my ($raw, $eof, $head) = @_;
    my $pos = 0;
    while (1) {
        my $i = index($raw, "\r\n\r\n", $pos);
        if ($i < 0) {
            return undef unless $eof;
            return { status => 0, error => length $raw
                         ? 'incomplete response header' : 'connection closed without response' };
        }
        my @lines = split /\r\n/, substr($raw, $pos, $i - $pos);
        my $sl = shift @lines // '';
        my $bstart = $i + 4;
        unless ($sl =~ m{^HTTP/(\d+\.\d+) (\d{3})(?: (.*))?$}) {
            return { status => 0, error => "bad status line: $sl" };
        }
        my ($status, $reason) = ($2, $3 // '');
        if ($status >= 100 && $status < 200 && $status != 101) {
            $pos = $bstart;
            next;
        }
        my (%h, @list);
        for my $l (@lines) {
            my ($n, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
            push @list, [$n, $v];
            $n = lc $n;
            $h{$n} = exists $h{$n} ? "$h{$n}, $v" : $v;
        }
        my %res = (status => $status, reason => $reason, headers => \%h,
                   header_list => \@list);

        if ($head || $status == 204 || $status == 304) {
            $res{body} = '';
            return \%res;
        }
        if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            return undef if !$eof && substr($raw, -4) ne "\r\n\r\n";
            my ($body, $done) = _dechunk($raw, $bstart);
            return undef if !$done && !$eof;
            $res{body} = $body;
            $res{error} = 'truncated chunked body' unless $done;
            return \%res;
        }
        if (defined $h{'content-length'}) {
            my $cl = $h{'content-length'};
            my $have = length($raw) - $bstart;
            if ($have >= $cl) {
                $res{body} = substr($raw, $bstart, $cl);
                return \%res;
            }
            return undef unless $eof;
            $res{body} = substr($raw, $bstart);
            $res{error} = "truncated body ($have of $cl bytes)";
            return \%res;
        }
        return undef unless $eof;
        $res{body} = substr($raw, $bstart);
        return \%res;
    }
}

sub _dechunk {
    my ($raw, $p) = @_;
    my $body = '';
    while (1) {
        my $e = index($raw, "\r\n", $p);
        return ($body, 0) if $e < 0;
        my $line = substr($raw, $p, $e - $p);
        my ($hex) = $line =~ /^\s*([0-9a-fA-F]+)/ or return ($body, 0);
        my $n = hex $hex;
        $p = $e + 2;
        if ($n == 0) {
            return ($body, 1) if substr($raw, $p, 2) eq "\r\n";
            return ($body, index($raw, "\r\n\r\n", $p - 2) >= 0 ? 1 : 0);
        }
        return ($body, 0) if length($raw) < $p + $n + 2;
        $body .= substr($raw, $p, $n);
        $p += $n + 2;
    }
}

sub _run_requests {
    my ($self, $reqs, $timeout) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my @res;
    my @st;
    my $start = Time::HiRes::time();
    my $deadline = $start + $timeout;

    for my $k (0 .. $#$reqs) {
        my $a = $reqs->[$k];
        my $port = $a->{port} // $self->port;
        my $t0 = Time::HiRes::time();
        my $out = eval { $self->_build_request($a) };
        if (!defined $out) {
            $res[$k] = { status => 0, error => "bad request args: $@", elapsed => 0 };
            next;
        }
        my $addr = $a->{addr} // '127.0.0.1';
        my $s = IO::Socket::INET->new(PeerAddr => $addr, PeerPort => $port,
                                      Proto => 'tcp', Timeout => 5);
        if (!$s) {
            $res[$k] = { status => 0, error => "connect to $addr:$port: $!",
                         elapsed => Time::HiRes::time() - $t0 };
            next;
        }
        $s->blocking(0);
        push @st, { k => $k, s => $s, out => $out, off => 0, in => '', t0 => $t0,
                    head => uc($a->{method} // '') eq 'HEAD' };
    }

    my $finish = sub {
        my ($c, $eof, $err) = @_;
        my $r = parse_response($c->{in}, 1, $c->{head});
        if (!$r->{status}) {
            $r->{error} = $err if defined $err && length $c->{in} == 0;
            $r->{error} .= " (write: $c->{werr})" if $c->{werr};
        }
        $r->{raw} = $c->{in};
        $r->{elapsed} = Time::HiRes::time() - $c->{t0};
        $r->{sent} = $c->{off};
        close $c->{s};
        $c->{done} = 1;
        $res[$c->{k}] = $r;
    };

    while (my @active = grep { !$_->{done} } @st) {
        my $now = Time::HiRes::time();
        if ($now >= $deadline) {
            for my $c (@active) {
                my $r = parse_response($c->{in}, 0, $c->{head});
                if ($r) { $finish->($c, 0); next }
                $res[$c->{k}] = { status => 0, error => 'timeout', raw => $c->{in},
                                  elapsed => $now - $c->{t0}, sent => $c->{off} };
                close $c->{s};
                $c->{done} = 1;
            }
            last;
        }
        my %by = map { fileno($_->{s}) => $_ } @active;
        my $rs = IO::Select->new(map { $_->{s} } @active);
        my $ws = IO::Select->new(map { $_->{s} }
                                 grep { !$_->{wdone} && $_->{off} < length $_->{out} } @active);
        my ($r, $w) = IO::Select->select($rs, $ws->count ? $ws : undef, undef,
                                         _min(0.5, $deadline - $now));
        for my $fh (@{ $w || [] }) {
            my $c = $by{fileno $fh};
            my $n = syswrite($fh, $c->{out}, 262144, $c->{off});
            if (defined $n) {
                $c->{off} += $n;
            } elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                $c->{werr} = "$!";
                $c->{wdone} = 1;    # peer stopped reading: keep reading the response
            }
        }
        for my $fh (@{ $r || [] }) {
            my $c = $by{fileno $fh};
            next if $c->{done};
            my $n = sysread($fh, my $buf, 262144);
            if ($n) {
                $c->{in} .= $buf;
                $finish->($c, 0) if parse_response($c->{in}, 0, $c->{head});
            } elsif (defined $n) {
                $finish->($c, 1, 'connection closed without response');
            } elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                $finish->($c, 1, "read: $!");
            }
        }
    }
    return @res;
}

sub request {
    my ($self, %a) = @_;
    my ($r) = $self->_run_requests([\%a], $a{timeout} // 10);
    return $r;
}

sub add_json {
    my ($r) = @_;
    $r->{json} = (defined $r->{body} && length $r->{body})
        ? eval { decode_json($r->{body}) } : undef;
    return $r;
}

sub json_request {
    my ($self, %a) = @_;
    if (ref $a{body}) {
        $a{headers} //= {};
        if (ref $a{headers} eq 'HASH'
            && !grep { lc eq 'content-type' } keys %{ $a{headers} })
        {
            $a{headers} = json_headers(%{ $a{headers} });
        }
    }
    return add_json($self->request(%a));
}

sub parallel_requests {
    my ($self, $reqs, %o) = @_;
    return $self->_run_requests($reqs, $o{timeout} // 15);
}

# a raw connected socket, for hand-made scenarios (slow clients, etc.)
sub raw_connect {
    my ($self, $port) = @_;
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $port // $self->port, Proto => 'tcp', Timeout => 5);
}

# POST $body (data is encoded) with Content-Type: application/json;
# %a adds or overrides request() arguments; the answer as json_request()
sub post_json {
    my ($self, $path, $body, %a) = @_;
    $body = encode_json($body) if ref $body;
    return $self->json_request(method => 'POST', path => $path, body => $body,
                               headers => json_headers(), %a);
}

# a POST of JSON on a raw socket, left unread (for answers that come later,
# or clients that go away): the socket, or undef
sub raw_send {
    my ($self, $path, $body) = @_;
    $body = encode_json($body) if ref $body;
    my $s = $self->raw_connect or return;
    my $req = $self->_build_request({ method => 'POST', path => $path, body => $body,
                                      headers => json_headers() });
    local $SIG{PIPE} = 'IGNORE';
    syswrite($s, $req) == length $req or return;
    return $s;
}

# the answer on a raw_send() socket within $timeout s (then closed), parsed
# as json_request() does
sub raw_read {
    my ($self, $s, $timeout) = @_;
    return { status => 0, error => 'not sent' } unless $s;
    my $buf = '';
    my $deadline = Time::HiRes::time() + $timeout;
    my $sel = IO::Select->new($s);
    while ((my $left = $deadline - Time::HiRes::time()) > 0) {
        next unless $sel->can_read($left);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
    }
    close $s;
    my $r = parse_response($buf, 1, 0);
    $r->{raw} = $buf;
    return add_json($r);
}

1;
