"""The redaction filter masks what a secret looks like and what the job knows is secret,
and leaves the rest of the line readable."""

from avfusion.redact import MASK, Redactor, cookie_values, redact_patterns, strip_url_secrets


def test_userinfo_in_any_url_is_masked_but_host_kept():
    line = "Unable to connect to proxy http://alice:s3cr3t-pw@127.0.0.5:3128 (refused)"
    out = redact_patterns(line)
    assert "s3cr3t-pw" not in out
    assert f"http://alice:{MASK}@127.0.0.5:3128" in out


def test_headers_and_ffmpeg_cookies_argument_are_masked():
    argv = (
        "ffmpeg -y -cookies 'SAPISID=abcdef123; path=/; domain=.youtube.com;\r\n' "
        "-i https://h/v -c copy out.mp4"
    )
    out = redact_patterns(argv)
    assert "abcdef123" not in out and "-i https://h/v" in out
    assert "Bearer tok3n" not in redact_patterns("Authorization: Bearer tok3n")
    assert "SID=zzzz" not in redact_patterns("Cookie: SID=zzzz; HSID=yyyy")


def test_netscape_cookie_line_value_is_masked():
    line = ".youtube.com\tTRUE\t/\tTRUE\t1999999999\tSAPISID\tvalue-that-is-secret"
    out = redact_patterns(f"WARNING: skipping cookie file entry due to invalid length 7: {line!r}")
    assert "value-that-is-secret" not in out and "SAPISID" in out


def test_signed_query_parameters_are_masked_others_kept():
    url = "https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential=AKIA/x&X-Amz-Signature=deadbeef&part=2"
    out = redact_patterns(f"HTTP Error 403 for {url}")
    assert "deadbeef" not in out and "AKIA/x" not in out and "part=2" in out
    media = "https://rr1.googlevideo.com/videoplayback?expire=1&sig=AOq0QJ8&lsig=AG3C&pot=MnQ&itag=18"
    out = redact_patterns(media)
    assert not any(s in out for s in ("AOq0QJ8", "AG3C", "MnQ")) and "itag=18" in out


def test_registered_values_are_masked_wherever_they_appear():
    redact = Redactor(["hunter22", "a"])  # a one-letter "secret" is ignored
    assert redact("pw is hunter22, really hunter22") == f"pw is {MASK}, really {MASK}"
    redact.add("longer-hunter22-value")
    assert redact("x longer-hunter22-value y") == f"x {MASK} y"


def test_stored_url_loses_credentials_and_signatures():
    url = "https://u:p@cdn.example.com/a/b.mp4?Signature=s&Expires=9&v=1#t=3"
    assert strip_url_secrets(url) == "https://cdn.example.com/a/b.mp4?Expires=9&v=1#t=3"
    assert strip_url_secrets("https://www.youtube.com/watch?v=abc") == "https://www.youtube.com/watch?v=abc"
    assert strip_url_secrets("/data/video.mp4") == "/data/video.mp4"


def test_cookie_values_include_malformed_lines():
    text = (
        "# Netscape HTTP Cookie File\n.youtube.com\tTRUE\t/\tTRUE\t0\tSID\tsidvalue1\nbroken line SECRETX\n"
    )
    values = cookie_values(text)
    assert "sidvalue1" in values and "broken line SECRETX" in values
