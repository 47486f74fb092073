import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
bandset = rs.bandset.create(["$DATA/s2", "S2_"], wavelengths=["Sentinel-2"], dates="2020-01-01")
output = rs.band_calc(
    input_bands=bandset,
    output_path="$DATA/out/detached_bandset_ndvi/ndvi.tif",
    expression_string='("#NIR#" - "#RED#") / ("#NIR#" + "#RED#")',
)
print(output.check)
print(output.paths)
print(bandset.get_band_attributes("name"))
print(bandset.get_wavelengths())
print(repr(str(bandset.date)))
print(catalog.get_bandset_count())
rs.close()
