import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
catalog.create_bandset(["$DATA/s2", "S2_"], wavelengths=["Sentinel-2"], bandset_number=1)
# bands sorted by wavelength: b1 B02, b2 B03, b3 B04, b4 B08, b5 B11
output = rs.band_calc(
    output_path="$DATA/out/new_bandset_band_alias/ndvi.tif",
    expression_string='("bandset1b4" - "bandset1b3") / ("bandset1b4" + "bandset1b3")',
    bandset_catalog=catalog,
)
print(output.check)
print(output.paths)
rs.close()
